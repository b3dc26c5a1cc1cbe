"""The local folder connector: config and the file system."""

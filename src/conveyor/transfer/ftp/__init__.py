"""The FTP/FTPS connector: config, its own asyncio client, TLS, listings, pool and the file system."""

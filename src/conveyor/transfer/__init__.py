"""File connectors: local folders, SFTP, FTP/FTPS."""

"""The SFTP connector (asyncssh): config, connection pool, host keys and the file system."""

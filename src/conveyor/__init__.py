"""conveyor: a daemon that moves files and messages from servers and brokers into flows, losing nothing."""

__version__ = "0.1.0"

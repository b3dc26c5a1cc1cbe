"""Imports every built-in connector's config module so each registers its type.

These modules hold pydantic models only; protocol libraries are imported by the
runtime modules, when a config uses them.
"""

import conveyor.brokers.pubsub.config
import conveyor.brokers.rabbitmq.config
import conveyor.transfer.ftp.config
import conveyor.transfer.local.config
import conveyor.transfer.sftp.config  # noqa: F401

"""Imports every built-in connector's config module so each registers its type.

These modules hold pydantic models only; protocol libraries are imported by the
runtime modules, when a config uses them.
"""

import conveyor.brokers.pubsub_config
import conveyor.brokers.rabbitmq_config
import conveyor.transfer.ftp_config
import conveyor.transfer.local_config
import conveyor.transfer.sftp_config  # noqa: F401

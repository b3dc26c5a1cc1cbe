"""Imports every built-in connector's config module so each registers its type.

These modules hold pydantic models only; protocol libraries are imported by the
runtime modules, when a config uses them.
"""

import conveyor.transfer.local_config  # noqa: F401
import conveyor.transfer.sftp_config  # noqa: F401
import conveyor.brokers.rabbitmq_config  # noqa: F401

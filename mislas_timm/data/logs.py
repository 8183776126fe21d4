"""Library log lines that say nothing to our users, dropped one message at a time.

``datasets`` reads a local data set folder's README.md as a dataset card; huggingface_hub logs
"Repo card metadata block was not found. Setting CardData to empty." (logger
``huggingface_hub.repocard``) for every README without a YAML block, such as the ones
``benchmarks/cifar10_png.py`` writes. It is a fact about a README, not a problem with the data,
and it appears on every load. :func:`silence_card_metadata_warning` filters exactly that message
on exactly that logger; everything else huggingface_hub logs still shows.
"""
from __future__ import annotations

import logging

__all__ = ['CARD_METADATA_LOGGER', 'CARD_METADATA_MESSAGE', 'silence_card_metadata_warning']

CARD_METADATA_LOGGER = 'huggingface_hub.repocard'
CARD_METADATA_MESSAGE = 'Repo card metadata block was not found'


class _DropCardMetadataWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CARD_METADATA_MESSAGE)


def silence_card_metadata_warning() -> None:
    """Drop huggingface_hub's "Repo card metadata block was not found" line (idempotent; for the process)."""
    logger = logging.getLogger(CARD_METADATA_LOGGER)
    if not any(isinstance(f, _DropCardMetadataWarning) for f in logger.filters):
        logger.addFilter(_DropCardMetadataWarning())

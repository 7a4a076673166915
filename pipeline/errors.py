"""The project's exceptions share one base, `MolmoBatchError`, so a caller can catch every error the
pipeline raises on purpose and tell it apart from a bug.

Each concept keeps its own exception beside its code (`config.ConfigError`, `source.refs.SourceError`,
`video.errors.DecodeError`, ...); all derive from `MolmoBatchError` and from the builtin they always were
(`ValueError` for bad input or configuration, `RuntimeError` for a failure while running).
"""

from __future__ import annotations


class MolmoBatchError(Exception):
    """Base of every exception the project raises on purpose."""


class PipelineError(MolmoBatchError, RuntimeError):
    """The run itself broke (not one video): committed parts stay, a rerun finishes the rest."""

"""Auto classes for MambaVL's tasks that have no `transformers` Auto class.

``transformers`` maps one model class per config and Auto class: ``AutoModelForVideoClassification`` gives
:class:`~mambavl.MambaVLForActionRecognition` for a MambaVL config, and action anticipation (predicting the next
action from the video before it) has no Auto class of its own. :class:`AutoModelForActionAnticipation` is that class,
in the `transformers` style (``from_pretrained``, ``from_config``, ``register``).
"""

from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

__all__ = ["AutoModelForActionAnticipation"]


class AutoModelForActionAnticipation(_BaseAutoModelClass):
    """Builds the action-anticipation model of a configuration: :class:`~mambavl.MambaVLForActionAnticipation` for
    a :class:`~mambavl.MambaVLConfig` (registered by ``import mambavl``).

    Example:

    >>> from mambavl import AutoModelForActionAnticipation, MambaVLConfig
    >>> from transformers import BertConfig
    >>> text_config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                          intermediate_size=32)
    >>> model = AutoModelForActionAnticipation.from_config(MambaVLConfig(hidden_size=32, text_config=text_config))
    >>> type(model).__name__
    'MambaVLForActionAnticipation'
    """

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())

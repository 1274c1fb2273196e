"""Case files: TOML -> frozen, validated dataclasses; ``--set section.key=value`` overrides.

Every rule is checked when the case is loaded, before any work starts; a ``ConfigError`` names the
field and the fix.
"""
from .case import SECTIONS, CaseConfig, load_case, parse_case, parse_case_text, parse_override
from .ensemble import RolloutConfig
from .evaluation import EvaluateConfig
from .fields import ConfigError, field_docs, from_mapping, option, to_mapping
from .learning import ModelConfig, TrainingConfig
from .physics import (SYSTEM_CONFIGS, CaseInfo, ComputeConfig, DoublePendulumConfig, InitialConditionConfig,
                      KuramotoSivashinskyConfig, Lorenz63Config, LotkaVolterraConfig, OutputConfig,
                      RigidBodyConfig, SystemConfig, TimeConfig, TwoBodyConfig, parse_system)

__all__ = [
    "CaseConfig", "load_case", "parse_case", "parse_case_text", "parse_override", "SECTIONS", "ConfigError", "option",
    "from_mapping", "to_mapping", "field_docs", "SYSTEM_CONFIGS", "SystemConfig", "parse_system",
    "CaseInfo", "TimeConfig", "InitialConditionConfig", "ComputeConfig", "OutputConfig", "ModelConfig",
    "TrainingConfig", "RolloutConfig", "EvaluateConfig", "KuramotoSivashinskyConfig", "TwoBodyConfig",
    "RigidBodyConfig", "LotkaVolterraConfig", "Lorenz63Config", "DoublePendulumConfig",
]

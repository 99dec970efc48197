"""The llmfab API: one pydantic model per kind, read by the workload, the operator and ``llmfab up``."""

from llmfab.api.common import API_GROUP, API_VERSION, GROUP_VERSION, Phase, Resource
from llmfab.api.dataset import Dataset
from llmfab.api.inference_service import InferenceService
from llmfab.api.loading import (
    KINDS,
    ValidationFailed,
    load_resources,
    parse_resource,
    resource_class,
)
from llmfab.api.reward_model import RewardModel
from llmfab.api.training_run import TrainingRun

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "KINDS",
    "Dataset",
    "InferenceService",
    "Phase",
    "Resource",
    "RewardModel",
    "TrainingRun",
    "ValidationFailed",
    "load_resources",
    "parse_resource",
    "resource_class",
]

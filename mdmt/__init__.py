"""mdmt: multi-domain multi-task recommendation ranking.

One data pipeline, trainer, evaluator and benchmark harness for MDMT models and their baselines.
See the README for the two commands that train the demo and run the tests.
"""

from .batch import Batch
from .schema import DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, TableSpec, TaskSpec

__version__ = "0.1.0"

__all__ = ["Batch", "DatasetSpec", "DomainSpec", "FeatureSpec", "SplitSpec", "TableSpec", "TaskSpec", "__version__"]

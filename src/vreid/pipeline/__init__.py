"""One command for the paper's whole AIC21 flow: ``vreid pipeline run PIPELINE.yml`` (docs/pipeline.md).

Above :mod:`vreid.engine` and :mod:`vreid.prep` (it calls training, extraction, post-processing,
translation and masks), below :mod:`vreid.cli`.
"""

from vreid.pipeline.run import DONE, Pipeline, StageCrashed, StageFailed, metrics_table, train_command
from vreid.pipeline.spec import ModelSpec, PipelineSpec, load_pipeline

__all__ = ["DONE", "ModelSpec", "Pipeline", "PipelineSpec", "StageCrashed", "StageFailed", "load_pipeline",
           "metrics_table", "train_command"]

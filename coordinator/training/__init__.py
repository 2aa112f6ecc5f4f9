"""Training jobs on the grid: DiLoCo rounds planned, checked and closed by the coordinator."""

from coordinator.training import schema as schema  # registers the table on the shared metadata
from coordinator.training.planner import plan_training
from coordinator.training.rounds import RoundManager
from coordinator.training.store import TASK_KIND, round_history, round_view
from coordinator.training.verify import check_train_output

__all__ = ["TASK_KIND", "RoundManager", "check_train_output", "plan_training", "round_history", "round_view"]

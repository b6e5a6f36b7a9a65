"""Write MoEKit's routing-log HDF5 schema (docs/routing-log.md) from PyTorch training runs.

- `RoutingLogWriter`: the live (SWMR), crash-safe HDF5 file, one row per step (numpy + h5py only).
- `RoutingRecorder`: the plain hook API for any loop that sees router logits (Megatron-Core too);
  all-reduces under torch.distributed, rank 0 writes.
- `RoutingLogCallback`: a transformers `TrainerCallback` reading `output_router_logits`.
"""

from .writer import LayerRow, RoutingLogError, RoutingLogWriter, StepRow

__all__ = ["LayerRow", "RoutingLogError", "RoutingLogWriter", "StepRow", "RoutingRecorder", "RoutingLogCallback"]
__version__ = "0.1.0"


def __getattr__(name):
    # torch and transformers are imported only when their parts are used.
    if name == "RoutingRecorder":
        from .recorder import RoutingRecorder
        return RoutingRecorder
    if name == "RoutingLogCallback":
        from .callback import RoutingLogCallback
        return RoutingLogCallback
    raise AttributeError(name)

"""Training on several processes with torchrun: ranks, the process group, global-batch BatchNorm, reductions.

No other module reads torchrun's environment itself. Each process trains on its share of every global batch
(gloo on CPU, NCCL on CUDA) and DistributedDataParallel averages the gradients. BatchNorm must see the whole
global batch too, or ranks normalise with different statistics and the result drifts from a single-process run.
"""

from __future__ import annotations

import torch

from agecli.system.ranks import world_size


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    world = world_size()
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) that autograd can go through: the gradient of a sum over ranks is summed too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every rank's share of the batch, on any backend.

    torch.nn.SyncBatchNorm only runs on GPUs; this is the gloo/CPU equivalent. The sums are differentiable
    all-reduces, so autograd also sums the gradient terms that flow back through the mean and variance,
    as one process holding the whole batch would compute them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        all_reduce = _SumAcrossRanks.apply
        dims, shape = [0, 2, 3], (1, -1, 1, 1)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # two passes, like BatchNorm itself
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1), momentum)  # running variance is unbiased
        return centred * torch.rsqrt(var + self.eps).view(shape) * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Global-batch BatchNorm under torchrun. Parameters and buffers stay the same objects (the optimizer
    already holds them) and state_dict keys do not change, so checkpoints are as from one process."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is torch.nn.BatchNorm2d and m.affine and m.track_running_stats:
            m.__class__ = GlobalBatchNorm2d
    return model


def mean_across_ranks(value: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()

"""Knowledge distillation: a student learns the teacher's age distribution as well as the labels.

loss = (1 - w) * the recipe's loss on the labels + w * T^2 * KL(teacher_T || student_T), where _T is the
softmax at temperature T (Hinton, Vinyals and Dean, 2015; T^2 keeps the gradient scale independent of T).

Teacher outputs are computed on the fly, on the very batch the student sees, augmentation included: a
cache of teacher outputs could hold only un-augmented views. The cost is one teacher forward pass per
batch, without gradients (for a teacher as large as the student, about a third more time per epoch;
an ensemble teacher costs one pass per member and view). The teacher may use another normalisation,
channel order or input size than the student: the batch is converted to what the teacher was trained on.
Several teachers (`--teacher A --teacher B`) are averaged in probability space. `distill.sources` limits the
teacher to some of a run's datasets: one that never saw a kind of photo teaches it poorly, and its wide
distributions there would widen the student's spread on them too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.modelio.builtin import resolve_model_path
from agecli.modelio.checkpoint import load_model
from agecli.models.fuse import fold_batchnorm


class Teacher:
    """One or several teacher checkpoints; several are averaged in probability space, like an ensemble's
    members, so models that cannot share one ensemble (other normalisations or input sizes) still teach
    together. `checkpoints`: a path, or several separated by commas."""

    def __init__(self, checkpoints: str, student_preprocess: Preprocess, student_ages: torch.Tensor | None,
                 weight: float, temperature: float, device: torch.device | str = "cpu", taught=None):
        if student_ages is None:
            raise AgeCliError("distill.teacher: the student predicts a single age; distillation needs a "
                              "distribution head (try ssrnet_dist, small_resnet or efficientnet_lite0)")
        paths = [p.strip() for p in str(checkpoints).split(",") if p.strip()]
        if not paths:
            raise AgeCliError("distill.teacher: no checkpoint given")
        self.models = [TeacherModel(path, student_preprocess, student_ages, device) for path in paths]
        self.weight, self.temperature = float(weight), float(temperature)
        self.taught = None if taught is None else np.asarray(taught, dtype=bool)  # per cache row; None: every row

    @torch.no_grad()
    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        probs = [(m.logits(x).float() / self.temperature).softmax(1) for m in self.models]
        return torch.stack(probs).mean(0).clamp_min(1e-12).log()

    def loss(self, label_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor, rows=None) -> torch.Tensor:
        """The blended loss of a batch. With `taught` (distill.sources), the teacher's term counts only the
        batch's faces from those sources (`rows`: their cache rows), still averaged over the whole batch, so
        the other faces learn from their labels alone."""
        t = self.temperature
        if self.taught is not None and rows is not None:
            keep = torch.from_numpy(self.taught[np.asarray(rows)]).to(x.device)
            if not keep.any():
                return (1 - self.weight) * label_loss
            student_logits, x_taught = student_logits[keep], x[keep]
        else:
            x_taught = x
        kd = F.kl_div((student_logits.float() / t).log_softmax(1), self.log_probs(x_taught), log_target=True,
                      reduction="sum") / len(x)  # over the whole batch, taught or not
        return (1 - self.weight) * label_loss + self.weight * kd * t * t


class TeacherModel:
    """One teacher checkpoint, fed the student's batch converted to its own input."""

    def __init__(self, checkpoint: str, student_preprocess: Preprocess, student_ages: torch.Tensor,
                 device: torch.device | str = "cpu"):
        model, preprocess, _ = load_model(resolve_model_path(checkpoint))  # a file or a shipped model's name
        ages = model.ages
        if not model.is_distribution or not torch.equal(ages.cpu(), student_ages.cpu()):
            span = "a single age" if ages is None else f"ages {int(ages[0])}-{int(ages[-1])}"
            raise AgeCliError(f"{checkpoint}: the teacher predicts {span}; the student needs a distribution over "
                              f"ages {int(student_ages[0])}-{int(student_ages[-1])}")
        self.model = model.to(device).eval()
        fold_batchnorm(self.model)  # a teacher never trains: its BatchNorm can go into its convolutions
        self.size = preprocess.input_size
        self.swap_channels = preprocess.channel_order != student_preprocess.channel_order
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t, per channel in the student's order
        order = (lambda v: v[::-1]) if self.swap_channels else (lambda v: v)
        student = student_preprocess
        mean_s, std_s = (torch.tensor(v, dtype=torch.float32) for v in (student.mean, student.std))
        mean_t, std_t = (torch.tensor(order(v), dtype=torch.float32) for v in (preprocess.mean, preprocess.std))
        self.scale = (std_s / std_t).view(1, 3, 1, 1).to(device)
        self.offset = ((mean_s - mean_t) / std_t).view(1, 3, 1, 1).to(device)

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.offset
        if self.swap_channels:
            x = x.flip(1)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.teacher_input(x))["logits"]

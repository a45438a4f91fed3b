"""Faces followed across video frames: a greedy IoU tracker, and one smoothed age per track.

Matching: each processed frame's boxes are paired with the live tracks greedily, best overlap (IoU)
first; a pair counts only above `iou_threshold`. A box left over starts a new track; a track not seen
for `max_missed` processed frames ends. This is enough for faces that move less than about half their
width between processed frames; it does not re-identify a face that leaves and comes back.

Smoothing: a track's age is the inverse-variance weighted running mean of its per-frame ages,
weight 1 / std^2 (a frame the model is unsure of counts less). Its spread is the weighted RMS of the
per-frame spreads, sqrt(sum(w * std^2) / sum(w)): frames of one face are not independent estimates,
so the spread does not shrink with the number of frames. A model without a spread gives every frame
weight 1 and the track no spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agecli.data.crops import Box, iou

MIN_STD = 0.5  # years: a spread near zero would let one frame outweigh all the others


@dataclass
class Track:
    id: int
    box: Box
    first_frame: int
    last_frame: int
    last_step: int  # the processed-frame counter when last seen
    frames: int = 0  # processed frames in which this face was seen
    weight_sum: float = 0.0
    weighted_age: float = 0.0
    weighted_var: float = 0.0
    has_std: bool = field(default=True)

    def add(self, age: float, std: float | None) -> None:
        """Fold one frame's estimate into the track's age."""
        if std is None:
            self.has_std, weight = False, 1.0
        else:
            std = max(float(std), MIN_STD)
            weight = 1.0 / std**2
            self.weighted_var += weight * std**2
        self.weight_sum += weight
        self.weighted_age += weight * float(age)
        self.frames += 1

    @property
    def age(self) -> float:
        return self.weighted_age / self.weight_sum

    @property
    def std(self) -> float | None:
        return math.sqrt(self.weighted_var / self.weight_sum) if self.has_std else None

    def summary(self) -> dict:
        return {"track": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "frames": self.frames, "age": round(self.age, 3),
                "spread": None if self.std is None else round(self.std, 3)}


class IoUTracker:
    """Greedy IoU matching of boxes to tracks, one processed frame at a time (see the module docstring)."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.step = 0
        self.next_id = 1

    def update(self, frame: int, boxes: list[Box]) -> list[Track]:
        """The track of each box (same order), creating tracks for new faces."""
        self.step += 1
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.live) for bi, b in enumerate(boxes)),
                       reverse=True)
        assigned: dict[int, Track] = {}
        taken: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in taken or bi in assigned:
                continue
            taken.add(ti)
            assigned[bi] = self.live[ti]
        for bi, box in enumerate(boxes):
            track = assigned.get(bi)
            if track is None:
                track = Track(self.next_id, box, frame, frame, self.step)
                self.next_id += 1
                self.live.append(track)
                assigned[bi] = track
            track.box, track.last_frame, track.last_step = box, frame, self.step
        self._end_lost()
        return [assigned[bi] for bi in range(len(boxes))]

    def _end_lost(self) -> None:
        keep = []
        for track in self.live:
            (keep if self.step - track.last_step <= self.max_missed else self.ended).append(track)
        self.live = keep

    def all_tracks(self) -> list[Track]:
        return sorted(self.ended + self.live, key=lambda t: t.id)

"""The part of the agent's configuration the fleet server may set: the remote config document.

A pole's box keeps in its own file only what makes it that box (identity, broker address and
credentials, local paths). Everything about what it watches and how it reports (cameras, rules,
camera-health thresholds, detection rate, outbox limits, health interval, log level) can come from
the command centre, as a document published retained on the box's `down/config` topic. These
models live in the wire contract so that the server validates a document with exactly the rules
the agent will apply, before publishing it, instead of learning from a refusal weeks later.

Every model refuses unknown keys: a typo in a document, or a setting this agent does not know
yet, must be refused with its name rather than silently ignored on a pole nobody will visit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# What the command centre acts on by default: people and vehicles.
DEFAULT_LABELS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class _Strict(BaseModel):
    # A typo in a key is a silent misconfiguration on a pole nobody will visit for months: refuse it.
    model_config = ConfigDict(extra="forbid")


class _Debounced(_Strict):
    """When a camera-health condition starts and ends.

    A condition starts only after its evidence held for `start_after_s` without a break and ends
    only after the picture was good for `end_after_s`: one covered lens is one start and one end
    message, however many frames it spans, and a passing bus or a few noisy frames are none.
    """

    enabled: bool = True
    start_after_s: float = Field(ge=0, le=3600)
    end_after_s: float = Field(ge=0, le=3600)


class CoveredConfig(_Debounced):
    """Lens covered, sprayed or blinded: a picture (nearly) without information.

    Measured on the downscaled grey frame. The real footage (vtest, daylight) reads mean 117-124,
    standard deviation 51-54 and Laplacian RMS ("detail") 35-38 grey levels, and still 11 when it is
    three times darker; a hand over the lens reads mean 6, a painted lens std 0.8, a sprayed one
    (the scene's colours smeared, std 38) detail 1.3, while a heavy defocus keeps detail 3.8 and is
    `blurred`, not covered.
    """

    start_after_s: float = Field(default=10.0, ge=0, le=3600)
    end_after_s: float = Field(default=5.0, ge=0, le=3600)
    dark_mean_max: float = Field(default=20.0, ge=0, le=255, description="Mean grey at or below: black.")
    bright_mean_min: float = Field(default=235.0, ge=0, le=255, description="Mean grey at or above: white.")
    uniform_std_max: float = Field(
        default=8.0, ge=0, le=128, description="Grey standard deviation at or below: one uniform colour."
    )
    detail_max: float = Field(
        default=2.0,
        ge=0,
        le=64,
        description="Laplacian RMS at or below: no detail left at all (sprayed or smeared lens, dense fog).",
    )


class FrozenConfig(_Debounced):
    """The stream delivers frames but the picture does not change.

    A live sensor never delivers the same picture twice: even a still street differs by its noise.
    The difference is taken on decimated (not averaged) pixels, so that noise stays in: 0.7-1.6 grey
    levels between frames 0.5 s apart on the real footage at its stillest, exactly 0 for a frozen one.
    """

    start_after_s: float = Field(default=10.0, ge=0, le=3600)
    end_after_s: float = Field(default=5.0, ge=0, le=3600)
    max_diff: float = Field(
        default=0.25, ge=0, le=255, description="Mean absolute grey difference between samples at or below: frozen."
    )


class BlurredConfig(_Debounced):
    """Defocus or heavy blur: sharpness fallen far below the camera's own baseline.

    Sharpness is var(Laplacian) / var(grey), which does not change with brightness or contrast
    (dusk, overcast, exposure), compared with the reference view's (or, without a reference, the
    first clear sample's). The real footage stays within 0.91-1.10 of its baseline, also as a JPEG
    of quality 5 (0.97) or 3 times darker (0.99); a stream of half the resolution reads 0.37, a
    Gaussian blur of 5 px 0.28, of 7 px 0.15 and of 21 px 0.012. The default alarms from 7 px on.
    """

    start_after_s: float = Field(default=20.0, ge=0, le=3600)
    end_after_s: float = Field(default=10.0, ge=0, le=3600)
    start_ratio: float = Field(default=0.2, gt=0, lt=1, description="Sharpness / baseline below: blurred.")
    end_ratio: float = Field(default=0.4, gt=0, lt=1, description="Sharpness / baseline above: sharp again.")
    baseline_tau_s: float = Field(
        default=1800.0,
        gt=0,
        description="Time constant with which the baseline follows slow changes (dusk, season) while sharp.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> BlurredConfig:
        if self.end_ratio < self.start_ratio:
            raise ValueError("end_ratio must be at least start_ratio (hysteresis)")
        return self


class ShiftedConfig(_Debounced):
    """The camera knocked out of aim: its view moved against the reference view.

    Checked every `check_every_s` (feature matching is the one costly step) by ORB features and a
    RANSAC similarity transform; the shift is how far the frame's corners moved, as a fraction of the
    frame width, so rotation counts as well as translation. The real footage matches its reference
    within 0.0015 (pedestrians and all); a knock of 10 % to the side reads 0.10, a turn of 6° 0.08.
    A view with plenty of texture but no trace of the reference counts as shifted (value 1.0); one
    with too little texture to tell (night, fog) counts as neither.
    """

    start_after_s: float = Field(default=30.0, ge=0, le=3600)
    end_after_s: float = Field(default=30.0, ge=0, le=3600)
    check_every_s: float = Field(default=5.0, gt=0, le=600)
    start_fraction: float = Field(default=0.05, gt=0, le=1, description="Corner movement / width above: shifted.")
    end_fraction: float = Field(default=0.03, gt=0, le=1, description="Corner movement / width below: back.")
    min_matches: int = Field(
        default=15, ge=4, description="RANSAC inliers below which the reference view is not found in the frame."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> ShiftedConfig:
        if self.end_fraction > self.start_fraction:
            raise ValueError("end_fraction must be at most start_fraction (hysteresis)")
        return self


class LowFpsConfig(_Debounced):
    """Sustained low frame rate: the camera delivers far fewer frames than it should (or none).

    The rate is FrameSource.fps() over the last 5 s. Without `expected_fps` the camera's normal rate
    is learned as the median of its first `learn_s` seconds with frames, then kept.
    """

    start_after_s: float = Field(default=30.0, ge=0, le=3600)
    end_after_s: float = Field(default=30.0, ge=0, le=3600)
    expected_fps: float | None = Field(
        default=None,
        gt=0,
        le=120,
        description="What the camera should deliver; default: the median rate of its first `learn_s` seconds.",
    )
    learn_s: float = Field(default=30.0, gt=0, le=3600)
    start_ratio: float = Field(default=0.5, gt=0, lt=1, description="Measured / expected below: low fps.")
    end_ratio: float = Field(default=0.7, gt=0, le=1, description="Measured / expected above: fine again.")

    @model_validator(mode="after")
    def _hysteresis(self) -> LowFpsConfig:
        if self.end_ratio < self.start_ratio:
            raise ValueError("end_ratio must be at least start_ratio (hysteresis)")
        return self


class CameraHealthConfig(_Strict):
    """Camera-health analytics of one camera: which conditions, their thresholds and debounce.

    The defaults were chosen on the real footage (see each condition); every number can be set per
    camera, e.g. `shifted: {enabled: false}` for a PTZ camera that is meant to move.
    """

    enabled: bool = True
    sample_fps: float = Field(
        default=2.0, gt=0, le=30, description="Frames per second analysed (each costs ~1 ms on a Pi-class core)."
    )
    covered: CoveredConfig = Field(default_factory=CoveredConfig)
    frozen: FrozenConfig = Field(default_factory=FrozenConfig)
    blurred: BlurredConfig = Field(default_factory=BlurredConfig)
    shifted: ShiftedConfig = Field(default_factory=ShiftedConfig)
    low_fps: LowFpsConfig = Field(default_factory=LowFpsConfig)


# What a left-behind rule watches for unless told otherwise: the COCO classes of luggage.
DEFAULT_LEFT_BEHIND_LABELS = ("backpack", "handbag", "suitcase")
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Point = tuple[float, float]


def _check_points(points: list[Point], info: ValidationInfo) -> list[Point]:
    """Coordinates must fit their units: a normalised 1.4 is a pixel value typed under the wrong units."""
    units = info.data.get("units", "normalised")
    for i, (x, y) in enumerate(points):
        if units == "normalised" and not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"point {i} is ({x:g}, {y:g}) but units is normalised, where x and y are fractions of the frame "
                "within 0..1; give pixels with units: pixels"
            )
        if x < 0 or y < 0:
            raise ValueError(f"point {i} is ({x:g}, {y:g}): pixel coordinates cannot be negative")
    return points


def _segments_cross(p: Point, q: Point, r: Point, s: Point) -> bool:
    """Whether segments pq and rs touch or cross (collinear overlaps included)."""

    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def within(a: Point, b: Point, c: Point) -> bool:  # c on the bounding box of ab
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and within(r, s, p))
        or (d2 == 0 and within(r, s, q))
        or (d3 == 0 and within(p, q, r))
        or (d4 == 0 and within(p, q, s))
    )


def _check_polygon(polygon: list[Point]) -> list[Point]:
    """A zone must be a simple polygon: a figure-of-eight has no clear inside and outside."""
    n = len(polygon)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if _segments_cross(polygon[i], polygon[(i + 1) % n], polygon[j], polygon[(j + 1) % n]):
                raise ValueError(
                    f"polygon edges {i}-{(i + 1) % n} and {j}-{(j + 1) % n} cross: the polygon must not intersect "
                    "itself (list the points in order around the zone)"
                )
    twice_area = sum(
        polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1] for i in range(n)
    )
    if abs(twice_area) < 1e-12:
        raise ValueError("polygon has no area: its points lie on one line")
    return polygon


class _Rule(_Strict):
    """What every rule has. `units` comes before the coordinates so that they are checked against it."""

    id: str = Field(pattern=RULE_ID_PATTERN, description="Names the rule in its events; unique per camera.")
    units: Literal["normalised", "pixels"] = Field(
        default="normalised", description="Coordinates as fractions of the frame (0..1) or as pixels."
    )
    labels: list[str] | Literal["any"] = Field(
        default="any", description="Object labels the rule applies to, or 'any' label the detector reports."
    )

    @field_validator("labels")
    @classmethod
    def _some_labels(cls, labels: list[str] | str) -> list[str] | str:
        if isinstance(labels, list) and not labels:
            raise ValueError("labels is empty: list the labels the rule applies to, or say any")
        return labels


class _TrackRule(_Rule):
    anchor: Literal["bottom_centre", "centre", "top_centre"] = Field(
        default="bottom_centre", description="The point of a box that counts: bottom_centre is where people stand."
    )
    hysteresis: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="How far past an edge or line the anchor must be, as a fraction of the box height, before "
        "the side counts as changed; absorbs detector jitter.",
    )


class _ZoneRule(_TrackRule):
    polygon: list[Point] = Field(min_length=3, description="The zone's corners in order.")

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(cls, polygon: list[Point], info: ValidationInfo) -> list[Point]:
        return _check_polygon(_check_points(polygon, info))


class ZoneRuleConfig(_ZoneRule):
    """Tells when a tracked object enters and leaves a zone."""

    type: Literal["zone"]


class LoiterRuleConfig(_ZoneRule):
    """Tells when a tracked object has stayed in a zone for `dwell_s`, and when it leaves."""

    type: Literal["loiter"]
    dwell_s: float = Field(gt=0, description="Seconds inside the zone before it counts as loitering.")


class LineRuleConfig(_TrackRule):
    """Counts tracked objects crossing a line, per direction: A is on the left going from the first
    point to the second, as drawn on the picture (a line drawn left to right has A above it)."""

    type: Literal["line"]
    points: list[Point] = Field(min_length=2, max_length=2, description="The line's two ends.")

    @field_validator("points")
    @classmethod
    def _valid_line(cls, points: list[Point], info: ValidationInfo) -> list[Point]:
        _check_points(points, info)
        if points[0] == points[1]:
            raise ValueError("the line's two points are the same point: give two distinct points")
        return points


class LeftBehindRuleConfig(_Rule):
    """Tells when a new object stays still with nobody near it for `after_s`, and when it is gone.

    Built for how a detector really sees a static object: intermittently, and not always under the
    same label (NanoDet calls one bollard a dog in one frame and a bird in the next). So objects are
    followed by their place, not by the tracker, and a gap of up to `absent_s` does not end them.
    """

    type: Literal["left_behind"]
    labels: list[str] | Literal["any"] = Field(
        default_factory=lambda: list(DEFAULT_LEFT_BEHIND_LABELS),
        description="Object labels to watch, or 'any' label except those in attended_by.",
    )
    polygon: list[Point] | None = Field(
        default=None, min_length=3, description="Where to watch (the object's box centre); default the whole frame."
    )
    after_s: float = Field(default=60.0, gt=0, description="Seconds still and unattended before it is reported.")
    absent_s: float = Field(
        default=5.0, gt=0, description="Seconds without seeing the object (nobody in front of it) before it is gone."
    )
    learn_s: float = Field(
        default=10.0, ge=0, description="Objects already there in the first seconds are part of the scene."
    )
    still_iou: float = Field(
        default=0.5, gt=0, le=1, description="Minimum overlap with where the object was for it to count as still."
    )
    attended_by: list[str] = Field(
        default_factory=lambda: ["person"], min_length=1, description="Labels of whoever can attend an object."
    )
    attend_distance: float = Field(
        default=1.0,
        gt=0,
        description="An object is attended while a person is within this many of their own heights of it.",
    )

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(cls, polygon: list[Point] | None, info: ValidationInfo) -> list[Point] | None:
        return None if polygon is None else _check_polygon(_check_points(polygon, info))

    @model_validator(mode="after")
    def _time_to_fire(self) -> LeftBehindRuleConfig:
        if self.absent_s >= self.after_s:
            raise ValueError(
                f"absent_s ({self.absent_s:g}) must be shorter than after_s ({self.after_s:g}): otherwise a single "
                "stray detection could stand for an object that stayed"
            )
        return self


RuleConfig = Annotated[
    ZoneRuleConfig | LoiterRuleConfig | LineRuleConfig | LeftBehindRuleConfig, Field(discriminator="type")
]



class PrivacyConfig(_Strict):
    """What must never leave the box in a picture.

    `masks` are blacked out of every snapshot (a neighbour's window, a school yard); objects whose label
    is in `blur_labels` are blurred beyond recognition (people by default: the command centre sees that
    someone is there, not who). With `blur_part: head` only the top quarter of the box is blurred, a
    face without a face detector. Set `blur_labels: []` for a camera whose pictures may show people.
    """

    units: Literal["normalised", "pixels"] = "normalised"
    masks: list[list[Point]] = Field(default_factory=list, description="Polygons blacked out of every snapshot.")
    blur_labels: list[str] = Field(default_factory=lambda: ["person"], description="Labels blurred in snapshots.")
    blur_part: Literal["whole", "head"] = Field(default="whole", description="Blur the whole box or its top quarter.")

    @field_validator("masks")
    @classmethod
    def _valid_masks(cls, masks: list[list[Point]], info: ValidationInfo) -> list[list[Point]]:
        for i, polygon in enumerate(masks):
            if len(polygon) < 3:
                raise ValueError(f"mask {i} has {len(polygon)} points: a mask needs at least 3")
            try:
                _check_polygon(_check_points(polygon, info))
            except ValueError as exc:
                raise ValueError(f"mask {i}: {exc}") from None
        return masks


class SnapshotConfig(_Strict):
    """The best picture of each detection event, sent after redaction (see PrivacyConfig)."""

    enabled: bool = True
    max_bytes: int = Field(default=60_000, ge=4096, le=1024 * 1024, description="JPEG size cap; quality drops to fit.")
    max_width: int = Field(default=960, ge=160, le=4096, description="Wider frames are scaled down to this.")
    quality: int = Field(default=80, ge=20, le=95, description="JPEG quality tried first.")


class MotionConfig(_Strict):
    """Motion gating: run the detector only where something moved (and on a slow re-check).

    A frame is compared with a running background at `width` pixels wide; changed areas larger than
    `min_area` (fraction of the frame) become regions, each padded by `padding` and merged when they
    overlap, and the detector runs on those crops instead of the whole frame. A frame without motion
    skips detection, but every `recheck_s` the whole frame is detected anyway, so that objects that
    stopped (a parked car, a bag left behind) are still seen.
    """

    enabled: bool = False
    width: int = Field(default=320, ge=64, le=1280, description="Width the motion mask is computed at.")
    threshold: int = Field(default=25, ge=1, le=255, description="Grey-level change that counts as motion.")
    min_area: float = Field(default=0.0005, ge=0, le=1, description="Smallest moving area, fraction of the frame.")
    padding: float = Field(default=0.5, ge=0, le=4, description="Padding of a region, fraction of its size.")
    min_region: float = Field(
        default=0.2, gt=0, le=1, description="Smallest crop side as a fraction of the frame height (context)."
    )
    max_coverage: float = Field(
        default=0.6, gt=0, le=1, description="Regions covering more than this fraction: detect the whole frame."
    )
    recheck_s: float = Field(default=5.0, gt=0, le=600, description="Full-frame detection at least this often.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="How fast the background follows the picture.")


class OutboxTtl(_Strict):
    """Seconds a message of each class may wait before it is given up; null: until sent or evicted."""

    telemetry: float | None = Field(default=None, gt=0)
    snapshot: float | None = Field(default=None, gt=0)
    health_event: float | None = Field(default=None, gt=0)
    alert: float | None = Field(default=None, gt=0)


# Smallest outbox worth having: room for a few thousand events besides the write-ahead log.
MIN_OUTBOX_BYTES = 256 * 1024


class OutboxConfig(_Strict):
    """The on-disk outbox (docs/outbox.md): its hard size cap, time-to-live per class, replay pace."""

    max_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024 * 1024),
        ge=MIN_OUTBOX_BYTES,
        description="Hard cap on the outbox files on disk: bytes, or a size such as '256MiB'.",
    )
    ttl_s: OutboxTtl = Field(default_factory=OutboxTtl)
    replay_rate: float | None = Field(
        default=100.0,
        gt=0,
        description="Messages per second sent from the backlog after a reconnect; null: as fast as the broker acks.",
    )
    group_commit_ms: float = Field(
        default=20.0, ge=0, le=200, description="Longest wait to gather messages into one disk commit (fsync)."
    )
    memory_alerts: int = Field(
        default=1000, ge=0, le=100_000, description="Alerts kept in RAM while the disk cannot be written."
    )
    compact_interval_s: float = Field(default=600.0, ge=10, description="How often to check for compaction.")



class CameraSettings(_Strict):
    """One camera as the server may set it; the box's own file may add its local `reference` view."""

    id: str = Field(pattern=CAMERA_ID_PATTERN)
    url: str = Field(
        min_length=1,
        description="rtsp://..., http://... (MJPEG), v4l2:///dev/video0 (USB camera), or a path to a video file.",
    )
    loop: bool = Field(default=False, description="Play a file source in a loop, at its own frame rate.")
    transport: Literal["tcp", "udp"] | None = Field(
        default=None, description="RTSP only: RTP over the RTSP connection (tcp, the default) or over udp."
    )
    stall_timeout_s: float = Field(
        default=10.0, ge=1, le=600, description="No new frame for this long: the stream is torn down and reopened."
    )
    failed_after_s: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="Unreachable this long and the camera's state is failed (still retried); wrong credentials, "
        "a wrong path or a missing device are failed at once.",
    )
    rules: list[RuleConfig] = Field(default_factory=list, description="Zones, lines and left-object watches.")
    health: CameraHealthConfig = Field(default_factory=CameraHealthConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)

    @field_validator("rules")
    @classmethod
    def _unique_rule_ids(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        ids = [r.id for r in rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique per camera; repeated: {', '.join(dupes)}")
        return rules

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(
            ("rtsp://", "rtsps://", "http://", "https://", "file://", "v4l2://")
        ):
            raise ValueError("url scheme must be rtsp, rtsps, http(s), v4l2 or file, or a plain path to a video file")
        if value.startswith("v4l2://") and not (value[7:].isdigit() or value[7:].startswith("/dev/")):
            raise ValueError("a v4l2 url names a device: v4l2:///dev/video0 or its index, v4l2://0")
        return value

    @model_validator(mode="after")
    def _transport_is_rtsp(self) -> CameraSettings:
        if self.transport is not None and not self.url.startswith(("rtsp://", "rtsps://")):
            raise ValueError("transport applies to rtsp:// cameras only; remove it or use an rtsp url")
        return self


class DetectSettings(_Strict):
    """Detection as the server may set it; the model file and thread count are the box's own."""

    fps: float = Field(default=5.0, gt=0, le=30, description="Frames per second run through the detector.")
    score_threshold: float = Field(default=0.35, gt=0, lt=1)
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), min_length=1)
    nms: Literal["per_class", "agnostic"] = Field(
        default="per_class", description="Suppress overlapping boxes of the same label only, or of any label."
    )
    update_every_s: float = Field(
        default=10.0, gt=0, le=3600, description="A live event sends an update at most this often."
    )


def unique_camera_ids(cameras: list[CameraSettings]) -> None:
    ids = [c.id for c in cameras]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"camera ids must be unique; repeated: {', '.join(dupes)}")


def check_rule_labels(cameras: list[CameraSettings], detect_labels: list[str]) -> None:
    """A rule on a label the detector does not report would silently never fire, and a blur label it does
    not report would leave people in the pictures: refuse both.

    Raises ValueError whose text starts with the field (`cameras.0.rules.1.labels: ...`).
    """
    detected = set(detect_labels)
    for c, cam in enumerate(cameras):
        hidden = [label for label in cam.privacy.blur_labels if label not in detected]
        if hidden:
            # A typo here would leave faces in the pictures: refuse it rather than send them.
            raise ValueError(
                f"cameras.{c}.privacy.blur_labels: {', '.join(hidden)} not in detect.labels, so it could never "
                "be blurred; add it to detect.labels or fix the name"
            )
        for r, rule in enumerate(cam.rules):
            where = f"cameras.{c}.rules.{r}"
            fields: dict[str, list[str] | str] = {"labels": rule.labels}
            if isinstance(rule, LeftBehindRuleConfig):
                fields["attended_by"] = rule.attended_by
                if rule.labels == "any" and not detected - set(rule.attended_by):
                    raise ValueError(
                        f"{where}.labels: any leaves nothing to watch: detect.labels has only "
                        f"{', '.join(sorted(detected))}, which attend objects"
                    )
            for name, labels in fields.items():
                if labels == "any":
                    continue
                missing = [label for label in labels if label not in detected]
                if missing:
                    one = len(missing) == 1
                    raise ValueError(
                        f"{where}.{name}: {', '.join(missing)} {'is' if one else 'are'} not in detect.labels, "
                        f"so the detector never reports {'it' if one else 'them'}; add "
                        f"{'it' if one else 'them'} there"
                    )


class AgentSettings(_Strict):
    """The remote config document: every key is optional, and a key it sets replaces the box's own.

    Merging (done by the agent, docs/protocol.md "config"): objects merge key by key, anything else
    (a number, a string, a list such as `cameras`) replaces the local value whole. A key the document
    leaves out keeps the value of the box's config file. The server computes the effective document
    (fleet -> group -> device) itself, so it sends whole camera lists.
    """

    cameras: list[CameraSettings] | None = Field(default=None, min_length=1)
    detect: DetectSettings | None = None
    outbox: OutboxConfig | None = None
    health_interval_s: float | None = Field(default=None, ge=1, le=3600)
    log_level: LogLevel | None = None

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraSettings] | None) -> list[CameraSettings] | None:
        if cameras is not None:
            unique_camera_ids(cameras)
        return cameras

    @model_validator(mode="after")
    def _rules_see_their_labels(self) -> AgentSettings:
        # Checkable here only when the document sets both; the agent checks the merged result again.
        if self.cameras is not None and self.detect is not None and "labels" in self.detect.model_fields_set:
            check_rule_labels(self.cameras, self.detect.labels)
        return self

"""The JSON shapes of alerts, their steps, agencies, routing rules and deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, Field, StrictInt, model_validator

from .models import Agency, Alert, AlertStep, Delivery, RoutingRule
from .pagination import NO_NUL, Page

Status = Literal["new", "acknowledged", "assigned", "resolved", "false_alarm"]


class StepOut(BaseModel):
    id: int = Field(description="Also the live stream's event id (the resume cursor).")
    alert_id: int
    step: Literal["created", "acknowledge", "assign", "resolve", "false_alarm"]
    status: Status = Field(description="The alert's status after this step.")
    actor: str = Field(description="user:<name> or token:<name>; edge:<device> for `created`.")
    agency_id: int | None
    note: str | None
    at: datetime

    @classmethod
    def of(cls, row: AlertStep) -> StepOut:
        return cls.model_validate(row, from_attributes=True)


class AlertOut(BaseModel):
    id: int
    message_id: str = Field(description="The edge message that raised it.")
    source: Literal["detection", "rule_event", "camera_health"]
    event_type: str = Field(description="detection:<label>, <rule_type>:<event>, or camera:<condition>.")
    device_id: str
    camera_id: str
    event_id: str | None
    rule_id: str | None
    label: str | None
    detail: dict[str, Any] = Field(description="The edge message's body, as received.")
    occurred_at: datetime = Field(description="By the device's clock.")
    received_at: datetime
    status: Status
    routed_agency_id: int | None = Field(description="The agency the routing rules chose, if any.")
    agency_id: int | None = Field(description="The agency it was assigned to.")
    updated_at: datetime

    @classmethod
    def of(cls, row: Alert) -> AlertOut:
        return cls.model_validate(row, from_attributes=True)


class AlertDetailOut(AlertOut):
    steps: list[StepOut]


class AlertPage(Page[AlertOut]):
    pass


class AlertChangeOut(BaseModel):
    """One event of the alert stream: a step, and the alert as it is now."""

    step: StepOut
    alert: AlertOut


class StepIn(BaseModel):
    note: str | None = Field(default=None, max_length=500, pattern=NO_NUL)


class AssignIn(StepIn):
    agency_id: StrictInt | None = Field(default=None, ge=1, description="Leave out to use the routed agency.")


class AgencyIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    webhook_url: AnyHttpUrl | None = Field(default=None, description="Where alerts are POSTed; none: by phone only.")
    format: Literal["json", "cap"] = Field(default="json", description="json (our body) or cap (OASIS CAP 1.2).")
    secret: str = Field(min_length=16, max_length=128, pattern=NO_NUL, description="The HMAC-SHA256 key.")


class AgencyOut(BaseModel):
    id: int
    name: str
    webhook_url: str | None
    format: Literal["json", "cap"]
    created_at: datetime

    @classmethod
    def of(cls, row: Agency) -> AgencyOut:
        return cls.model_validate(row, from_attributes=True)


class AgencyPage(Page[AgencyOut]):
    pass


class RoutingRuleIn(BaseModel):
    # Strict: JSON true is not the number 1 here.
    position: StrictInt = Field(default=100, ge=0, le=1_000_000, description="Lower is tried first.")
    agency_id: StrictInt = Field(ge=1)
    event_type: str | None = Field(default=None, max_length=80, pattern=r"^[A-Za-z0-9_:.\-]+\*?$")
    rule_id: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    site: str | None = Field(default=None, max_length=64, pattern=NO_NUL, description="A device id prefix.")
    device_id: str | None = Field(default=None, max_length=64, pattern=NO_NUL)
    from_minute: StrictInt | None = Field(default=None, ge=0, lt=1440, description="Local minutes after midnight.")
    to_minute: StrictInt | None = Field(default=None, ge=0, le=1440)

    @model_validator(mode="after")
    def _window(self) -> RoutingRuleIn:
        if (self.from_minute is None) != (self.to_minute is None):
            raise ValueError("give both from_minute and to_minute, or neither")
        return self


class RoutingRuleOut(RoutingRuleIn):
    id: int
    created_at: datetime

    @classmethod
    def of(cls, row: RoutingRule) -> RoutingRuleOut:
        return cls.model_validate(row, from_attributes=True)


class RoutingRulePage(Page[RoutingRuleOut]):
    pass


class DeliveryOut(BaseModel):
    id: int
    alert_id: int
    agency_id: int
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    last_error: str | None
    last_status: int | None
    next_attempt_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Delivery) -> DeliveryOut:
        return cls.model_validate(row, from_attributes=True)


class DeliveryPage(Page[DeliveryOut]):
    pass

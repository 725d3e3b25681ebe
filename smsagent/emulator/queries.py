"""Query strings of the console list calls (ListServers, ListTasks) and the filters they apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smsagent.emulator.errors import from_validation

DEFAULT_LIMIT = 200


class ListQuery(BaseModel):
    """Paging shared by the list calls: `limit` 0 means the default page of 200."""

    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=0, le=1000)] = 0
    offset: Annotated[int, Field(ge=0)] = 0

    def page(self, items: list[Any]) -> list[Any]:
        """The slice of `items` this query asks for."""
        return items[self.offset : self.offset + (self.limit or DEFAULT_LIMIT)]


class ListServersQuery(ListQuery):
    """The ListServers filters the emulator supports."""

    id: Optional[str] = None
    name: Optional[str] = None
    ip: Optional[str] = None
    state: Optional[str] = None
    migration_cycle: Optional[str] = None
    connected: Optional[bool] = None

    def matches(self, source: Mapping[str, Any]) -> bool:
        """True when a source's view passes every filter given."""
        wanted = self.model_dump(exclude={"limit", "offset"}, exclude_none=True)
        return all(source.get(key) == value for key, value in wanted.items())


class ListTasksQuery(ListQuery):
    """The ListTasks filters the emulator supports."""

    id: Optional[str] = None
    name: Optional[str] = None
    state: Optional[str] = None
    source_server_id: Optional[str] = None

    def matches(self, task: Mapping[str, Any]) -> bool:
        """True when a task's view passes every filter given."""
        wanted = self.model_dump(exclude={"limit", "offset", "source_server_id"}, exclude_none=True)
        if any(task.get(key) != value for key, value in wanted.items()):
            return False
        source_id = (task.get("source_server") or {}).get("id")
        return self.source_server_id is None or source_id == self.source_server_id


QueryT = TypeVar("QueryT", bound=ListQuery)


def parse_query(model: type[QueryT], query: Mapping[str, str]) -> QueryT:
    """Validate a query string; a bad parameter is a 400 naming it."""
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise from_validation(exc) from exc

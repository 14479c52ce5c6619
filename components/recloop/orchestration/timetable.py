"""Cron schedules that never start a run for a time already past.

Airflow's CronTriggerTimetable with catchup off still schedules the latest trigger time before now: a DAG
unpaused on Tuesday at 10:00 with `@daily` retrains at once, for Tuesday 00:00. recloop's docs promise
that missed times are not made up, and a retrain at an unplanned moment surprises operators, so this
timetable moves such a run to the next trigger time. Registered through the `recloop` Airflow plugin
(`pyproject.toml`, entry point `airflow.plugins`), as Airflow requires for timetables outside its core.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo
from airflow.timetables.trigger import CronTriggerTimetable


def _now() -> Any:
    from airflow._shared.timezones.timezone import coerce_datetime, utcnow

    return coerce_datetime(utcnow())


class NoMissedRunsCronTimetable(CronTriggerTimetable):
    """A CronTriggerTimetable whose next run, with catchup off, is never before now."""

    def next_dagrun_info(self, *, last_automated_data_interval: Any, restriction: Any) -> DagRunInfo | None:
        info = super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=restriction
        )
        if info is None or restriction.catchup:
            return info
        now = _now()
        if info.run_after >= now:
            return info
        upcoming = self._align_to_next(now)
        if restriction.latest is not None and restriction.latest < upcoming:
            return None
        return DagRunInfo.interval(upcoming - self._interval, upcoming)


class RecloopPlugin(AirflowPlugin):
    name = "recloop"
    timetables = [NoMissedRunsCronTimetable]

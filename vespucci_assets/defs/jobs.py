"""Jobs the schedules and sensors launch."""

import dagster as dg

from vespucci_assets.defs.partitions import DAY_X_PROJECT

PARTITIONS_JOB = "vespucci_partitions"
COMPLETENESS_JOB = "vespucci_completeness"
YESTERDAY_COMPLETE = "yesterday_partitions_complete"
YESTERDAY_COMPLETE_KEY = dg.AssetCheckKey(dg.AssetKey("sessions"), YESTERDAY_COMPLETE)

partitions_job = dg.define_asset_job(
    PARTITIONS_JOB,
    # The completeness check looks at the whole instance, not at a partition: it has its own job.
    selection=dg.AssetSelection.all() - dg.AssetSelection.checks(YESTERDAY_COMPLETE_KEY),
    partitions_def=DAY_X_PROJECT,
    description="Every Vespucci asset and its partition checks, for a range of days of one project.",
)

completeness_job = dg.define_asset_job(
    COMPLETENESS_JOB,
    selection=dg.AssetSelection.checks(YESTERDAY_COMPLETE_KEY),
    description="Are yesterday's session partitions materialized for every project?",
)

"""`pipeline writers`: who is writing to an output (the writers' leases, the commit lock), and the
operator's override to end a dead writer's lease at once instead of waiting for it to expire.

Ending a lease tells every other writer that its owner is dead: the next run's start-up recovery then
deletes its uncommitted part files and processes its videos again. End only a writer you know is gone.
`--sweep` lists the whole output and deletes every uncommitted part file whose writer holds no live lease
(`TableSink.sweep`): start-up recovery looks only where dead writers' leases point, so files no lease
accounts for (a writer presumed dead and cleaned up while it still wrote) wait for a sweep.
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.io.storage import get_fs
from pipeline.tables.leases import end_lease, read_leases
from pipeline.tables.sink import TableSink


def command(args: Any) -> int:
    fs, root = get_fs(args.output, args.s3_endpoint_url)
    root = root.rstrip("/")
    if args.sweep:
        # A writer that writes nothing (its run date is never used): it takes a lease like any other.
        sink = TableSink(args.output, run_date="1970-01-01", endpoint_url=args.s3_endpoint_url, purpose="sweep")
        try:
            removed = sink.sweep()
        finally:
            sink.close()
        print(f"swept {args.output}: removed {removed} uncommitted part file(s) no live writer owns")
        return 0
    if args.end:
        if end_lease(fs, root, args.end):
            print(f"ended the lease of writer {args.end}: the next run on {args.output} cleans up after it")
            return 0
        print(f"error: no lease of writer {args.end} on {args.output} (see `pipeline writers --output ...`)",
              file=sys.stderr)
        return 2
    leases = read_leases(fs, root)
    if not leases:
        print(f"no writer holds a lease on {args.output}")
    for info in leases:
        print(info.describe())
    return 0

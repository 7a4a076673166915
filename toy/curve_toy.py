"""Print the eval learning curve of a run as a markdown table: python curve_toy.py [run/history.json]"""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/work/toy/run/history.json"
rows = json.load(open(path))
cols = ["step", "stage", "min", "count_exact", "P50", "R50", "P_px5", "R_px5", "P100", "R100", "track_id_kept", "video_gain"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")

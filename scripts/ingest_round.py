"""One round of `ferry bench --phases ingest --rounds 1`, run in a scratch folder, for the
scripts that measure the machine during it (`cpu-split.py`, `sync-breakdown.py`).

The round drives the bare handler first (after 1 s of warm-up), then starts `ferry serve` and
drives it, then the synced bare handler; each phase lasts `seconds + 3` s, so a measurement of
`seconds` that starts 1.5 s after `ferry serve` appears falls inside Ferry's phase.
"""
import os
import subprocess
import tempfile
import time


class IngestRound:
    def __init__(self, ferry, seconds):
        self.ferry = os.path.realpath(ferry)
        if not os.access(self.ferry, os.X_OK):
            raise SystemExit("%s is not an executable Ferry binary" % ferry)
        self.work = tempfile.mkdtemp()
        self.log = os.path.join(self.work, "bench.txt")
        with open(self.log, "w") as log:
            self.bench = subprocess.Popen(
                [self.ferry, "bench", "--duration", str(int(seconds + 3)),
                 "--phases", "ingest", "--rounds", "1"],
                cwd=self.work, stdout=log, stderr=subprocess.STDOUT)

    def wait_for_serve(self):
        """The pid of the round's `ferry serve` once it has started and warmed up (None if the
        bench ended first)."""
        serve = None
        while serve is None and self.bench.poll() is None:
            found = subprocess.run(["pgrep", "-f", self.ferry + " serve"],
                                   capture_output=True, text=True)
            serve = (found.stdout.split() or [None])[0]
            time.sleep(0.05)
        time.sleep(1.5)
        return serve

    def finish(self):
        """Waits for the bench and prints its round line (requests/s, events/s, ratio)."""
        self.bench.wait()
        with open(self.log) as log:
            print("".join(line for line in log if line.startswith("  round 1:")), end="")

#!/usr/bin/env python3
"""Writes the TUI test logs (schema 1) in this directory: clean.jsonl, violations.jsonl,
lost.jsonl. Deterministic (fixed seed); rerun after changing a scenario and review the diff.

The scenarios follow kernel.md: a fork copies VMAs in address order under the write section
(cpr_enter seq s -> write_begin s -> write_end s+1 -> cpr_exit s+2 for an anon COW VMA), and a
FOLL_PIN GUP-fast call loads the seqcount (read_begin), bails on odd, or re-checks it
(read_retry) and backs out (retry_fail) when it moved. Write events report the value before
their increment."""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

FN_PROBES_612 = [
    {"name": "cpr_enter", "target": "copy_page_range", "offset": 0},
    {"name": "cpr_exit", "target": "copy_page_range", "offset": 0},
    {"name": "gup_enter", "target": "gup_fast_fallback", "offset": 0},
    {"name": "gup_exit", "target": "gup_fast_fallback", "offset": 0},
]
SITE_PROBES_612 = FN_PROBES_612 + [
    {"name": "write_begin", "target": "copy_page_range", "offset": 0x1A3},
    {"name": "write_end", "target": "copy_page_range", "offset": 0x2F8},
    {"name": "read_begin", "target": "gup_fast_fallback", "offset": 0x9C},
    {"name": "read_retry", "target": "gup_fast_fallback", "offset": 0x14E},
    {"name": "retry_fail", "target": "gup_fast_fallback", "offset": 0x15B},
]
SITE_PROBES_61 = [
    {"name": "cpr_enter", "target": "copy_page_range", "offset": 0},
    {"name": "cpr_exit", "target": "copy_page_range", "offset": 0},
    {"name": "gup_enter", "target": "internal_get_user_pages_fast", "offset": 0},
    {"name": "gup_exit", "target": "internal_get_user_pages_fast", "offset": 0},
    {"name": "write_begin", "target": "copy_page_range", "offset": 0x18B},
    {"name": "write_end", "target": "copy_page_range", "offset": 0x2C1},
    {"name": "read_begin", "target": "internal_get_user_pages_fast", "offset": 0x8E},
    {"name": "read_retry", "target": "internal_get_user_pages_fast", "offset": 0x131},
    {"name": "retry_fail", "target": "internal_get_user_pages_fast", "offset": 0x13C},
]

# FOLL_* by era (kernel.md section 2): 6.3+ PIN=1<<19 WRITE=1 GET=2 LONGTERM=1<<8.
PIN_WRITE_612 = 0x80001
PIN_WRITE_LONGTERM_612 = 0x80101
GET_612 = 0x2
PIN_WRITE_61 = 0x40001  # before 6.3: PIN=0x40000


class Log:
    def __init__(self, kernel, probes, mode, t0):
        self.lines = []
        self.t = t0
        self.t0 = t0
        self.events = 0
        self.seq = {}
        h = {"kind": "header", "schema": 1, "tool": "tracer 0.1.0", "kernel": kernel,
             "probes": probes, "mode": mode}
        if mode == "instruction":
            # What discovery says of a kernel whose sites were all found: intact.
            gup = next(p["target"] for p in probes if p["name"] == "read_begin")
            h["discovery"] = {
                "sides": {"write": "intact", "read": "intact"},
                "functions": [
                    {"symbol": "copy_page_range", "role": "write", "required": True,
                     "status": "intact", "defects": [], "reason": None,
                     "sites": ["write_begin", "write_end"]},
                    {"symbol": gup, "role": "read", "required": True, "status": "intact",
                     "defects": [], "reason": None,
                     "sites": ["read_begin", "read_retry", "retry_fail"]},
                ],
            }
        self.lines.append(json.dumps(h, separators=(",", ":")))

    def at(self, dt):
        self.t += dt
        return self

    def ev(self, kind, task, **body):
        pid, tid, comm, mm, cpu = task
        o = {"kind": kind, "ts": self.t, "cpu": cpu, "pid": pid, "tid": tid, "comm": comm, "mm": mm}
        o.update(body)
        self.lines.append(json.dumps(o, separators=(",", ":")))
        self.events += 1
        self.t += random.randint(150, 900)

    def lost(self, probe, count):
        self.lines.append(json.dumps({"kind": "lost", "probe": probe, "count": count},
                                     separators=(",", ":")))

    def fork(self, task, vmas, sites):
        """One dup_mmap: copy_page_range per VMA, in address order."""
        mm = task[3]
        for (start, end, cow, anon) in vmas:
            s = self.seq.setdefault(mm, 0)
            self.ev("cpr_enter", task, vma_start=hex(start), vma_end=hex(end), cow=cow, seq=s)
            if cow and anon:
                if sites:
                    self.ev("write_begin", task, seq=s)
                    self.t += random.randint(2000, 30000)
                    self.ev("write_end", task, seq=s + 1)
                else:
                    self.t += random.randint(2000, 30000)
                self.seq[mm] = s + 2
            self.ev("cpr_exit", task, seq=self.seq[mm], ret=0)

    def pin(self, task, nr, flags, sites, ret=None, fast_only=False, longterm=False):
        """A FOLL_PIN GUP-fast call that finds the counter even and unchanged."""
        s = self.seq.setdefault(task[3], 0)
        self.ev("gup_enter", task, start=hex(0x7F3A12000000 + random.randrange(0, 1 << 20, 4096)),
                nr_pages=nr, flags=flags, pin=True, fast_only=fast_only, longterm=longterm, seq=s)
        if sites:
            self.ev("read_begin", task, seq=s)
            self.t += random.randint(500, 4000)
            self.ev("read_retry", task, seq=s)
        else:
            self.t += random.randint(1000, 6000)
        self.ev("gup_exit", task, ret=nr if ret is None else ret, seq=s)

    def summary(self, lost=None, **extra):
        o = {"kind": "summary", "events": self.events, "lost": lost or {},
             "duration_ns": self.t - self.t0}
        o.update(extra)
        self.lines.append(json.dumps(o, separators=(",", ":")))

    def write(self, name):
        with open(os.path.join(HERE, name), "w") as f:
            f.write("\n".join(self.lines) + "\n")


# VMAs of a small process: text (private file, no anon_vma), data, heap, anon buffer, a
# MAP_SHARED region (never COW), stack.
VMAS = [
    (0x55D0C0A00000, 0x55D0C0A2B000, True, False),
    (0x55D0C0C2B000, 0x55D0C0C2D000, True, True),
    (0x55D0C1E4F000, 0x55D0C1E70000, True, True),
    (0x7F3A12000000, 0x7F3A12400000, True, True),
    (0x7F3A13000000, 0x7F3A13100000, False, False),
    (0x7FFD4A9F0000, 0x7FFD4AA11000, True, True),
]


def clean():
    random.seed(1)
    log = Log("6.12.117+deb12-cloud-amd64", SITE_PROBES_612, "instruction", 7_204_118_000_000)
    main = (4100, 4100, "stress", "mm1", 0)
    pinner = (4100, 4101, "stress-pin", "mm1", 1)
    fio = (5230, 5230, "fio", "mm7", 1)
    bash = (880, 880, "bash", "mm3", 0)
    log.seq.update({"mm1": 24, "mm7": 0, "mm3": 112})
    for i in range(30):
        log.at(random.randint(60_000_000, 110_000_000))
        if i % 3 == 0:
            log.pin(fio, 64, PIN_WRITE_612, True)
        if i % 7 == 3:
            log.fork(bash, VMAS[:3], True)
        # The pinner races the fork: sometimes it loads the counter while a write section is
        # open (odd: bail to the slow path), sometimes the section starts inside its window
        # (retry fails, pins backed out).
        if i % 5 == 1:
            s = log.seq["mm1"]
            log.ev("cpr_enter", main, vma_start=hex(VMAS[1][0]), vma_end=hex(VMAS[1][1]), cow=True, seq=s)
            log.ev("write_begin", main, seq=s)
            log.ev("gup_enter", pinner, start="0x7f3a12010000", nr_pages=8, flags=PIN_WRITE_612,
                   pin=True, fast_only=False, longterm=False, seq=s + 1)
            log.ev("read_begin", pinner, seq=s + 1)
            # The copy of a big VMA goes on well after the load (far more than a probe's skew,
            # even under emulation): a true bail.
            log.at(random.randint(150_000, 400_000))
            log.ev("write_end", main, seq=s + 1)
            log.ev("cpr_exit", main, seq=s + 2, ret=0)
            log.seq["mm1"] = s + 2
            log.fork(main, VMAS[2:], True)
            log.at(40_000)
            log.ev("gup_exit", pinner, ret=8, seq=log.seq["mm1"])
        elif i % 5 == 3:
            s = log.seq["mm1"]
            log.ev("gup_enter", pinner, start="0x7f3a12020000", nr_pages=8, flags=PIN_WRITE_612,
                   pin=True, fast_only=False, longterm=False, seq=s)
            log.ev("read_begin", pinner, seq=s)
            log.ev("cpr_enter", main, vma_start=hex(VMAS[0][0]), vma_end=hex(VMAS[0][1]), cow=True, seq=s)
            log.ev("cpr_exit", main, seq=s, ret=0)
            log.ev("cpr_enter", main, vma_start=hex(VMAS[1][0]), vma_end=hex(VMAS[1][1]), cow=True, seq=s)
            log.ev("write_begin", main, seq=s)
            log.ev("read_retry", pinner, seq=s + 1)
            log.ev("retry_fail", pinner, seq=s + 1)
            log.ev("write_end", main, seq=s + 1)
            log.ev("cpr_exit", main, seq=s + 2, ret=0)
            log.seq["mm1"] = s + 2
            log.fork(main, VMAS[2:], True)
            log.ev("gup_exit", pinner, ret=8, seq=log.seq["mm1"])
        else:
            log.pin(pinner, 4, PIN_WRITE_612, True)
            if i % 2 == 0:
                log.fork(main, VMAS, True)
                # The child execs or exits; its own mm never forks here.
        if i % 6 == 5:
            # A long pin that the fast path only half served: the rest came from slow GUP.
            log.pin(fio, 16, PIN_WRITE_LONGTERM_612, True, ret=8, longterm=True)
        if i % 4 == 2:
            log.ev("gup_enter", bash, start="0x55d0c1e50000", nr_pages=1, flags=GET_612, pin=False,
                   fast_only=False, longterm=False, seq=log.seq["mm3"])
            log.ev("gup_exit", bash, ret=1, seq=log.seq["mm3"])
    log.summary()
    log.write("clean.jsonl")


def violations():
    random.seed(2)
    log = Log("6.1.0-56-cloud-amd64", SITE_PROBES_61, "instruction", 951_880_000_000)
    main = (2301, 2301, "rds-pin", "mm1", 0)
    pinner = (2301, 2302, "rds-pin", "mm1", 1)
    log.seq["mm1"] = 6
    for i in range(12):
        log.at(random.randint(80_000_000, 120_000_000))
        log.pin(pinner, 2, PIN_WRITE_61, True)
        if i % 2 == 0:
            log.fork(main, VMAS[1:4], True)
        if i == 3:
            # odd_not_bailed: the call loaded an odd counter and went on to the retry check.
            s = log.seq["mm1"]
            log.ev("cpr_enter", main, vma_start=hex(VMAS[1][0]), vma_end=hex(VMAS[1][1]), cow=True, seq=s)
            log.ev("write_begin", main, seq=s)
            log.ev("gup_enter", pinner, start="0x7f3a12030000", nr_pages=2, flags=PIN_WRITE_61,
                   pin=True, fast_only=False, longterm=False, seq=s + 1)
            log.ev("read_begin", pinner, seq=s + 1)
            log.ev("read_retry", pinner, seq=s + 1)
            log.at(random.randint(150_000, 400_000))
            log.ev("write_end", main, seq=s + 1)
            log.ev("cpr_exit", main, seq=s + 2, ret=0)
            log.ev("gup_exit", pinner, ret=2, seq=s + 2)
            log.seq["mm1"] = s + 2
        if i == 6:
            # retry_ignored: the counter moved during the window, no retry_fail followed.
            s = log.seq["mm1"]
            log.ev("gup_enter", pinner, start="0x7f3a12040000", nr_pages=2, flags=PIN_WRITE_61,
                   pin=True, fast_only=False, longterm=False, seq=s)
            log.ev("read_begin", pinner, seq=s)
            log.ev("cpr_enter", main, vma_start=hex(VMAS[3][0]), vma_end=hex(VMAS[3][1]), cow=True, seq=s)
            log.ev("write_begin", main, seq=s)
            log.ev("write_end", main, seq=s + 1)
            log.ev("cpr_exit", main, seq=s + 2, ret=0)
            log.ev("read_retry", pinner, seq=s + 2)
            log.ev("gup_exit", pinner, ret=2, seq=s + 2)
            log.seq["mm1"] = s + 2
        if i == 9:
            # copy_delta: a VMA that is not COW took the write section.
            s = log.seq["mm1"]
            log.ev("cpr_enter", main, vma_start=hex(VMAS[4][0]), vma_end=hex(VMAS[4][1]), cow=False, seq=s)
            log.ev("write_begin", main, seq=s)
            log.ev("write_end", main, seq=s + 1)
            log.ev("cpr_exit", main, seq=s + 2, ret=0)
            log.seq["mm1"] = s + 2
    log.summary()
    log.write("violations.jsonl")


def lost():
    random.seed(3)
    log = Log("6.12.117+deb12-cloud-amd64", FN_PROBES_612, "function", 3_310_052_000_000)
    main = (7001, 7001, "stress", "mm1", 1)
    pinner = (7001, 7003, "stress-pin", "mm1", 0)
    iou = (7100, 7100, "iou-bench", "mm4", 1)
    log.seq.update({"mm1": 2, "mm4": 0})
    for i in range(25):
        log.at(random.randint(50_000_000, 90_000_000))
        log.pin(pinner, 4, PIN_WRITE_612, False)
        log.pin(iou, 32, PIN_WRITE_LONGTERM_612, False, longterm=True)
        if i % 2 == 1:
            log.fork(main, VMAS, False)
        if i == 8:
            # The ring buffer overflowed: these never reached user space.
            log.lost("gup_enter", 214)
            log.lost("cpr_exit", 37)
            # The exit whose enter was lost.
            log.ev("gup_exit", pinner, ret=4, seq=log.seq["mm1"])
        if i == 17:
            log.lost("gup_enter", 96)
    log.summary(lost={"gup_enter": 310, "cpr_exit": 37, "gup_exit": 12})
    log.write("lost.jsonl")


clean()
violations()
lost()

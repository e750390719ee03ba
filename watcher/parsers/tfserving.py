"""TensorFlow Serving's glog lines.

Three shapes reach ``docker logs`` of a ``tensorflow/serving`` container:

* TF's own logger: ``2024-05-01 10:00:00.123456: I tensorflow_serving/model_servers/server.cc:74] msg``
* classic glog (older builds, ``--logtostderr``): ``I0501 10:00:00.123456    12 file.cc:123] msg``
  (no year, so no timestamp is derived: the source's receive time is closer to the truth than a
  guessed year);
* libevent's HTTP server and protobuf: ``[evhttp_server.cc : 238] NET_LOG: Entering the event loop
  ...`` and ``[libprotobuf ERROR external/.../text_format.cc:324] Error parsing ...``.

Fields: ``file``, ``line_no`` and, when the message names a servable (``{name: m version: 3}``,
``No versions of servable m found ...``), ``model_name`` and ``version``.
"""

from __future__ import annotations

import re

from watcher.parsers.base import Parsed, normalize_level, servable_fields
from watcher.timefmt import epoch

KIND = "tfserving"

_TF = re.compile(
    r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?: ([IWEF]) ([^\s:\]]{1,512}):(\d{1,9})\] ?"
)
_GLOG = re.compile(
    r"([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? {1,16}(\d{1,10}) ([^\s:\]]{1,512}):(\d{1,9})\] ?"
)
_BARE = re.compile(r"([IWEF]) ([^\s:\]]{1,512}):(\d{1,9})\] ?")  # timestamp trimmed by the user/shipper
_EVHTTP = re.compile(r"\[([^\s:\]]{1,512}) : (\d{1,9})\] ?")
_PROTOBUF = re.compile(r"\[libprotobuf (INFO|WARNING|ERROR|FATAL) ([^\s:\]]{1,512}):(\d{1,9})\] ?")


def parse(line: str) -> Parsed | None:
    """Parse one TF Serving line; ``None`` if it has none of the shapes above."""
    first = line[:1]
    if first.isdigit():
        m = _TF.match(line)
        if m is None:
            return None
        y, mo, d, hh, mi, ss, frac, sev, file, line_no = m.groups()
        ts = epoch(int(y), int(mo), int(d), int(hh), int(mi), int(ss), frac or "")
        return _build(line[m.end() :], sev, ts, file, line_no)
    if first in ("I", "W", "E", "F"):
        if line[1:2] == " ":
            m = _BARE.match(line)
            return None if m is None else _build(line[m.end() :], m.group(1), None, m.group(2), m.group(3))
        m = _GLOG.match(line)
        if m is None:
            return None
        sev, _mo, _d, _hh, _mi, _ss, _frac, thread, file, line_no = m.groups()
        parsed = _build(line[m.end() :], sev, None, file, line_no)
        return Parsed(parsed.kind, parsed.message, parsed.level, None, {**parsed.fields, "thread": thread})
    if first == "[":
        m = _EVHTTP.match(line)
        if m is not None:
            return _build(line[m.end() :], "I", None, m.group(1), m.group(2))
        m = _PROTOBUF.match(line)
        if m is not None:
            return _build(line[m.end() :], m.group(1), None, m.group(2), m.group(3))
    return None


def _build(message: str, severity: str, ts: float | None, file: str, line_no: str) -> Parsed:
    fields = {"file": file, "line_no": line_no}
    servable_fields(message, fields)
    return Parsed(KIND, message, normalize_level(severity), ts, fields)

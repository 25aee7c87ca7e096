"""``recsys data check SOURCE``: every problem of a data source's files in one pass.

Where the readers raise at the first bad value (``recsys.data.validation``), ``check_source``
collects every problem of every file of a ``DataSource`` (interaction files, feature files,
the source's own settings) as ``Problem`` rows and writes nothing::

    for p in check_source(DataSource(interactions="events.csv", item_features="items.csv")):
        print(p.format())   # error: events.csv (row 3): column 'user' has 1 missing ... Fix: ...

An *error* is something loading would fail on (or silently get wrong: a mapped column that
does not exist, a negative weight); a *warning* is legal but worth a look (columns that are
not read, feature rows without interactions, interaction ids without a feature row,
repeated interactions that ``dedupe`` drops). Relative paths are read from the working
directory, as training reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.features import FeatureColumns, fill_by_dtype
from recsys.data.formats import read_adjacency
from recsys.data.formats.table import ALIASES, read_table
from recsys.data.preprocess import kcore, to_implicit
from recsys.data.source import DataSource, SplitSpec
from recsys.data.splits import SPLITS
from recsys.data.validation import (
    CANONICAL,
    DEDUPE_CHOICES,
    ID_COLUMNS,
    duplicate_finding,
    id_findings,
    rating_findings,
    time_findings,
    validate_interactions,
)
from recsys.errors import ConfigError, RecsysError

__all__ = ["Problem", "check_source", "check_path", "source_files", "read_source_yaml", "summary"]

TIME_SPLITS = ("leave_last_out", "time", "global_time")  # split kinds that order rows by time


@dataclass(frozen=True)
class Problem:
    """One problem of a data source.

    ``severity``: ``error`` (``recsys data check`` exits 1) or ``warning`` (printed only);
    ``file``: the file (or the YAML of the source); ``where``: ``row N`` (data rows from 0),
    ``column 'x'``, a setting (``split.kind``) or empty for the whole file.
    """

    severity: str
    file: str
    where: str
    problem: str
    fix: str

    def format(self) -> str:
        """One line in the project's shape: ``error: FILE (WHERE): PROBLEM. Fix: FIX.``"""
        at = f" ({self.where})" if self.where else ""
        return f"{self.severity}: {self.file}{at}: {self.problem}. Fix: {self.fix}."


def _from_error(e: RecsysError, file: str, where: str = "", severity: str = "error") -> Problem:
    """A raised project error ('<value>: <problem>. Fix: <fix>.') as a Problem."""
    msg = str(e)
    problem, _, fix = msg.partition(". Fix: ")
    for prefix in (f"{file}: ", f"{Path(file).expanduser()}: "):
        problem = problem.removeprefix(prefix)
    return Problem(severity, file, where, problem, fix.rstrip(".") or "see the message")


def _present(path: str, file: str) -> Problem | None:
    """A missing / empty path as one Problem (relative paths are read from the working directory)."""
    p = Path(path).expanduser()
    if not p.exists():
        rel = "" if p.is_absolute() else f" (relative paths are read from the working directory, {Path.cwd()})"
        return Problem("error", file, "", f"does not exist{rel}", "check the path in the source, or run from the "
                       "folder it is relative to")
    if p.is_file() and p.stat().st_size == 0:
        return Problem("error", file, "", "the file is empty (0 bytes)", "re-export or re-copy the file")
    return None


def _ids(s: pd.Series) -> pd.Series:
    """Ids as the readers clean them (numbers stay numbers, the rest str), missing ones dropped."""
    s = s.dropna()
    return s if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) else s.astype(str)


def _mapping(file: str, available: list[str], columns: dict | None) -> tuple[dict[str, str], list[Problem]]:
    """canonical name -> column of the file, and the mapping's problems (``formats.table``'s rules)."""
    out: list[Problem] = []
    if columns is None:  # the usual names
        mapping = {k: next((a for a in ALIASES[k] if a in available), None) for k in CANONICAL}
        for k in ID_COLUMNS:
            if mapping[k] is None:
                out.append(Problem("error", file, "columns", f"has no {k} column under a usual name "
                                   f"({', '.join(ALIASES[k])}); columns present: {available}",
                                   f"rename the column, or name it: columns: {{{k}: <column>}}"))
        return {k: v for k, v in mapping.items() if v is not None}, out
    cols = {("rating" if k == "weight" else k): v for k, v in columns.items()}
    said = {("rating" if k == "weight" else k): k for k in columns}  # the key as the user wrote it
    unknown = sorted(set(cols) - set(CANONICAL))
    if unknown:
        out.append(Problem("error", file, "columns", f"columns: has unknown canonical name(s) {unknown}; keys are "
                           "user, item, time, weight (or rating)", "map canonical name -> column in the file"))
    mapping = {**{c: c for c in CANONICAL}, **{k: v for k, v in cols.items() if k in CANONICAL}}
    wanted = {}
    for k, v in mapping.items():
        if v is None:
            continue
        if v in available:
            wanted[k] = v
        elif k in ID_COLUMNS or k in cols:
            k = said.get(k, k)
            out.append(Problem("error", file, f"column {v!r}", f"mapped column {k} -> {v!r} not found; columns "
                               f"present: {available}", f"set columns: {{{k}: <one of those>}}"))
    if len(set(wanted.values())) != len(wanted):
        out.append(Problem("error", file, "columns", f"two canonical names map to the same column ({wanted})",
                           "map user, item, weight, time to different columns"))
    return wanted, out


def _sep_hint(file: str, available: list[str]) -> Problem:
    guesses = [s for s in (",", "\t", ";", "|", "::", " ") if s in available[0]]
    hint = f"set sep: {guesses[0]!r}" if guesses else "set sep: to the file's separator"
    return Problem("error", file, "columns", f"has a single column {available[0]!r}; user and item columns are "
                   "required", f"{hint} (or format:) to match the file")


@dataclass
class _Read:
    """What one interaction file gave: its canonical-name frame (None when unreadable) and
    whether it had errors."""

    frame: pd.DataFrame | None = None
    errors: bool = True


def _check_interactions(path: str, src: DataSource, out: list[Problem]) -> _Read:
    """Append every problem of one interaction file to ``out``."""
    n0 = len(out)
    miss = _present(path, path)
    if miss is not None:
        out.append(miss)
        return _Read()
    p = Path(path).expanduser()
    if p.suffix.lower() == ".txt" or p.name.lower().endswith(".txt.gz"):
        try:
            users, items = read_adjacency(p)
        except RecsysError as e:
            out.append(_from_error(e, path))
            return _Read()
        return _Read(pd.DataFrame({"user": users, "item": items}), errors=False)
    try:
        _, raw = read_table(p, sep=src.sep, format=src.format)
    except RecsysError as e:
        out.append(_from_error(e, path))
        return _Read()
    available = [str(c) for c in raw.columns]
    mapping, found = _mapping(path, available, src.columns)
    if found and len(available) == 1:
        found = [_sep_hint(path, available)]
    out += found
    if not all(k in mapping for k in ID_COLUMNS):
        return _Read()
    extra = [c for c in available if c not in mapping.values()]
    if extra:
        out.append(Problem("warning", path, "columns", f"column(s) {extra} are not used (only user, item, weight / "
                           f"rating and time are read; mapped: {mapping})", "nothing to do if they are not needed; "
                           "else map it: columns: {weight: <column>} (or time:)"))
    df = raw[list(mapping.values())].set_axis(list(mapping), axis=1).reset_index(drop=True)
    if len(df) == 0:
        out.append(Problem("error", path, "", "has zero interaction rows", "check that the file holds data rows "
                           "below its header"))
        return _Read()

    def row(f, name: str) -> Problem:  # names the file's column where it is not the canonical name
        col = mapping[name]
        if col == name:
            return Problem("error", path, f"row {f.row}", f.problem, f.fix)
        return Problem("error", path, f"row {f.row}", f.problem.replace(f"column '{name}'", f"column {col!r} (the "
                       f"{name})", 1), f.fix.replace(f"['{name}']", f"[{col!r}]"))

    for name in ID_COLUMNS:
        out += [row(f, name) for f in id_findings(df[name], name)]
    if "rating" in df:
        out += [row(f, "rating") for f in rating_findings(df["rating"])]
    key = pd.DataFrame({k: (df[k] if pd.api.types.is_numeric_dtype(df[k]) else df[k].astype(str))
                        for k in ID_COLUMNS})
    if "time" in df:  # unparsable: neither unix seconds nor datetimes
        seconds, found = time_findings(df["time"])
        out += [row(f, "time") for f in found]
        key["time"] = seconds if seconds is not None else df["time"]
    dup = duplicate_finding(key, src.dedupe)
    if dup is not None:
        canon = [c for c in ("user", "item", "time") if c in key]
        fix = dup.fix.replace(f"subset={canon}", f"subset={[mapping[c] for c in canon]}")
        out.append(Problem("error" if src.dedupe is None else "warning", path, f"row {dup.row}", dup.problem, fix))
    errors = any(p.severity == "error" for p in out[n0:])
    return _Read(df, errors)


def _check_features(path: str, kind: str, cols: FeatureColumns | None, src: DataSource, ids: pd.Index | None,
                    out: list[Problem]) -> None:
    """Append every problem of one feature file to ``out``; ``ids``: the ``kind`` ids of the
    interaction files (None when they could not be read)."""
    miss = _present(path, path)
    if miss is not None:
        out.append(miss)
        return
    try:
        _, df = read_table(Path(path).expanduser(), sep=src.sep)
    except RecsysError as e:
        out.append(_from_error(e, path))
        return
    cols = FeatureColumns(**vars(cols)) if cols is not None else FeatureColumns()
    available = [str(c) for c in df.columns]
    key = getattr(cols, kind) or next((a for a in ALIASES[kind] if a in available), None)
    if key is None or key not in available:
        what = (f"{kind}_columns names the key column {kind}: {key!r}, which is not in the file" if key else
                f"has no {kind} id column under a usual name ({', '.join(ALIASES[kind])})")
        out.append(Problem("error", path, f"column {key!r}" if key else "columns",
                           f"{what}; columns present: {available}", f"set {kind}_columns: {{{kind}: <column>}}"))
    fill_by_dtype(df, key, cols)  # as features.feature_frame
    missing = [c for c in cols.used() if c not in available]
    if missing:
        out.append(Problem("error", path, "columns", f"feature column(s) {missing} not found; columns present: "
                           f"{available}", f"name existing columns in {kind}_columns (categorical / multi / numeric)"))
    if cols.title is not None and cols.title not in available:
        out.append(Problem("error", path, f"column {cols.title!r}", f"title column {cols.title!r} not found; "
                           f"columns present: {available}", f"set title: to one of those in {kind}_columns"))
    for c in cols.numeric:
        if c not in available:
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        bad = (num.isna() & df[c].notna() | np.isinf(num.astype("float64"))).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            out.append(Problem("error", path, f"row {i}", f"numeric column {c!r} has {int(bad.sum())} non-numeric or "
                               f"infinite values (first at row {i}: {df[c].iloc[i]!r})",
                               f"clean the column, or list {c!r} as categorical"))
    if key is None or key not in available:
        return
    out += [Problem("error", path, f"row {f.row}", f.problem.replace("every interaction needs", "every row needs"),
                    f.fix) for f in id_findings(df[key], kind)]
    fids = _ids(df[key].reset_index(drop=True))
    dup = fids.duplicated().to_numpy()
    if dup.any():
        i = int(fids.index[np.argmax(dup)])
        out.append(Problem("error", path, f"row {i}", f"{int(dup.sum())} duplicate {kind} ids (first repeat at row "
                           f"{i}: {_py(fids.loc[i])!r}); a feature file has one row per {kind}",
                           f"drop the duplicates (df.drop_duplicates(subset=[{key!r}]))"))
    if ids is None:
        return
    fidx = pd.Index(fids.to_numpy()).unique()
    types = ("" if fidx.isin(ids).any() or pd.api.types.is_numeric_dtype(fidx) == pd.api.types.is_numeric_dtype(ids)
             else f"; the interaction ids are {'numbers' if pd.api.types.is_numeric_dtype(ids) else 'strings'}, "
             f"these are {'numbers' if pd.api.types.is_numeric_dtype(fidx) else 'strings'}")
    extra = fidx[~fidx.isin(ids)]
    if len(extra):
        used = ("they are ranked as cold items (catalogue: all_items)" if kind == "item" and
                src.catalogue == "all_items" else "their rows are not used")
        first = int(fids.index[np.argmax(fids.isin(extra).to_numpy())])
        out.append(Problem("warning", path, f"row {first}", f"{len(extra)} {kind} id(s) have a feature row but no "
                           f"interaction (e.g. {list(map(_py, extra[:3]))}); {used}{types}",
                           "nothing to do if that is expected; else check that the ids match the interaction "
                           "files' (same values, same type)"))
    lacking = ids[~ids.isin(fidx)]
    if len(lacking):
        out.append(Problem("warning", path, f"column {key!r}", f"{len(lacking)} of {len(ids)} {kind} id(s) of the "
                           f"interactions have no feature row (e.g. {list(map(_py, lacking[:3]))}); they get no "
                           f"features{types}", f"add rows for them if they should have {kind} features"))


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _check_settings(src: DataSource, file: str, out: list[Problem]) -> None:
    """The source's own settings (the rules of ``load_source``)."""
    def bad(where: str, problem: str, fix: str) -> None:
        out.append(Problem("error", file, where, problem, fix))

    if src.interactions is None and src.train is None:
        bad("interactions", "the source has neither interactions: nor train:", "add `interactions: events.csv` "
            "(split by `split:`), or `train:` (+ `valid:`, `test:`) for pre-split files")
    if src.interactions is not None and src.train is not None:
        bad("interactions", f"interactions={src.interactions!r} and train={src.train!r}: need exactly one",
            "keep `interactions:` (split by `split:`) or the pre-split `train:` / `valid:` / `test:` files")
    if src.split.kind not in SPLITS:
        bad("split.kind", f"split kind={src.split.kind!r} is unknown; valid: {sorted(SPLITS)}", "pick one of them")
    shares = (src.split.valid, src.split.test)
    if not all(isinstance(x, (int, float)) and x >= 0 for x in shares) or sum(shares) >= 1:
        bad("split", f"split valid={src.split.valid!r}, test={src.split.test!r}: need two shares >= 0 summing to "
            "< 1", "e.g. split: {valid: 0.1, test: 0.1}")
    if src.min_weight is not None and src.rating_threshold is not None:
        bad("min_weight", f"min_weight={src.min_weight} and rating_threshold={src.rating_threshold}: both keep rows "
            "whose weight / rating is >= the value", "set only one of them")
    k = src.k_core
    ok = isinstance(k, int) or (isinstance(k, dict) and set(k) <= {"users", "items"} and
                                all(isinstance(v, int) for v in k.values()))
    if not ok:
        bad("k_core", f"k_core={k!r}: need an int or {{users: k, items: k}}", "e.g. k_core: {users: 5, items: 5}")
    elif src.train is not None and max([k] if isinstance(k, int) else [*k.values(), 0]) > 1:
        bad("k_core", f"k_core={k!r} with pre-split files: filtering would change your fixed split",
            "filter the files before splitting them, or drop k_core")
    if src.train is not None and src.test is None:
        bad("test", f"pre-split source train={src.train!r} has no test file", "add `test: <file>`, or use "
            "`interactions:` with a split")
    frac = src.valid_frac
    if src.train is not None and src.valid is None and not (isinstance(frac, (int, float)) and 0 < frac < 1):
        bad("valid_frac", f"valid_frac={src.valid_frac}: need 0 < valid_frac < 1 without a valid file",
            "e.g. valid_frac: 0.1")
    if src.catalogue not in ("interactions", "all_items"):
        bad("catalogue", f"catalogue={src.catalogue!r}: need 'interactions' or 'all_items'", "pick one of them")
    if src.dedupe not in DEDUPE_CHOICES:
        bad("dedupe", f"dedupe={src.dedupe!r}: must be one of {DEDUPE_CHOICES}", "null (duplicates are an error), "
            "first or last")
    if src.user_columns is not None and src.user_columns.multi:
        bad("user_columns.multi", f"user_columns multi={src.user_columns.multi}: multi-valued user features are not "
            "supported", "list them as categorical, or move them to the item side")


def _check_filters(src: DataSource, reads: dict[str, _Read], out: list[Problem]) -> None:
    """On clean interaction files: the time column a time split needs, and rows left after the
    weight threshold and k-core (the rules of ``load_source``)."""
    thr = src.min_weight if src.min_weight is not None else src.rating_threshold
    k = src.k_core if isinstance(src.k_core, dict) else {"users": src.k_core, "items": src.k_core}
    for path, r in reads.items():
        if r.errors or r.frame is None:
            continue
        if path == src.interactions and src.split.kind in TIME_SPLITS and "time" not in r.frame:
            out.append(Problem("error", path, "columns", f"split kind={src.split.kind!r} orders rows by time, and "
                               "the file has no time column", "map it (columns: {time: <column>}), or use "
                               "split: {kind: random}"))
        try:
            df = validate_interactions(r.frame, path, dedupe=src.dedupe if src.dedupe in ("first", "last") else "last")
            if thr is not None or "rating" in df:
                df = to_implicit(df, thr, source=path)
            if path == src.interactions and max(k.get("users", 0), k.get("items", 0)) > 1:
                kcore(df, k.get("users", 0), k.get("items", 0), source=path)
        except RecsysError as e:
            out.append(_from_error(e, path))


def check_source(src: DataSource, file: str = "data source") -> list[Problem]:
    """Every problem of ``src``: its settings, each interaction file, each feature file.

    ``file`` names the source itself in setting problems (the YAML file). Reads the files
    (relative paths from the working directory), writes nothing. Returns the problems in
    file order; ``[]`` when clean.
    """
    out: list[Problem] = []
    _check_settings(src, file, out)
    reads = {f: _check_interactions(f, src, out) for f in (src.interactions, src.train, src.valid, src.test)
             if f is not None}
    _check_filters(src, reads, out)
    frames = [r.frame for r in reads.values() if r.frame is not None]
    complete = bool(reads) and len(frames) == len(reads)
    for kind, path, cols in (("item", src.item_features, src.item_columns),
                             ("user", src.user_features, src.user_columns)):
        if path is None:
            continue
        ids = pd.Index(pd.concat([_ids(f[kind]) for f in frames]).to_numpy()).unique() if complete else None
        _check_features(path, kind, cols, src, ids, out)
    return out


def source_files(src: DataSource) -> list[str]:
    """The files a source names, in check order."""
    return [f for f in (src.interactions, src.train, src.valid, src.test, src.item_features, src.user_features)
            if f is not None]


def _source_mapping(path: Path) -> dict:
    """The source mapping of a YAML file: ``data: {source: ...}`` (also under ``init_args``),
    ``source: ...`` at top level, or the mapping itself."""
    import yaml  # PyYAML, a dependency of jsonargparse

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: is not a readable YAML file ({' '.join(str(e).split())}). Fix: check the path "
                          "and the YAML syntax.") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: holds a {type(doc).__name__}, not a mapping. Fix: write a data source mapping "
                          "(interactions: events.csv ...) or a fit config with data: {source: ...}.")
    names = {f.name for f in fields(DataSource)}
    if isinstance(doc.get("data"), dict):
        data = doc["data"].get("init_args", doc["data"])
        if not isinstance(data.get("source"), dict):
            named = f" (it names dataset {data['dataset']!r}: run recsys data stats {data['dataset']})" \
                if "dataset" in data else ""
            raise ConfigError(f"{path}: its data block has no source: mapping{named}. Fix: add data: {{source: "
                              "{interactions: events.csv}}, or check the named dataset with recsys data stats.")
        return data["source"]
    if isinstance(doc.get("source"), dict):
        return doc["source"]
    if set(doc) <= names or {"interactions", "train"} & set(doc):
        return doc
    raise ConfigError(f"{path}: has no data source (keys {sorted(doc)}). Fix: write data: {{source: ...}}, source: "
                      f"..., or the source mapping itself (keys among {sorted(names)}).")


def _source_from_mapping(m: dict, file: str) -> tuple[DataSource | None, list[Problem]]:
    """A ``DataSource`` from a YAML mapping (None when it cannot be built) and the mapping's problems."""
    out = []
    names = [f.name for f in fields(DataSource)]
    unknown = sorted(set(m) - set(names))
    if unknown:
        out.append(Problem("error", file, "source", f"unknown key(s) {unknown}; keys are {names}",
                           "fix the spelling or drop them"))
    kw = {k: v for k, v in m.items() if k in names}
    nested = {"split": SplitSpec, "item_columns": FeatureColumns, "user_columns": FeatureColumns,
              "columns": None}
    for k, cls in nested.items():
        v = kw.get(k)
        if v is None:
            continue
        allowed = [f.name for f in fields(cls)] if cls is not None else None
        if not isinstance(v, dict) or allowed is not None and set(v) - set(allowed):
            want = f"a mapping with keys among {allowed}" if allowed else "a mapping {canonical name: column}"
            out.append(Problem("error", file, k, f"{k}={v!r}: need {want}", f"e.g. {k}: {{{(allowed or ['user'])[0]}: "
                               "...}"))
            kw.pop(k)
    for k in ("interactions", "train", "valid", "test", "item_features", "user_features"):
        if kw.get(k) is not None and not isinstance(kw[k], str):
            out.append(Problem("error", file, k, f"{k}={kw[k]!r}: need a file path", f"{k}: events.csv"))
            kw.pop(k)
    try:
        return DataSource(**kw), out
    except (TypeError, ValueError) as e:
        out.append(Problem("error", file, "source", f"cannot build the data source ({e})", "check the values"))
        return None, out


def read_source_yaml(path: str | Path) -> DataSource:
    """The ``DataSource`` of a YAML file (``_source_mapping``); ``ConfigError`` on a bad mapping."""
    p = Path(path).expanduser()
    src, problems = _source_from_mapping(_source_mapping(p), str(path))
    if problems:
        raise ConfigError(problems[0].format().removeprefix("error: "))
    return src


def check_path(source: str) -> tuple[list[Problem], list[str]]:
    """(problems, files checked) of a SOURCE: a YAML data source, or one interaction file read
    as ``--data.dataset=PATH`` reads it (usual column names, repeats keep the last)."""
    if Path(source).suffix.lower() in (".yaml", ".yml"):
        miss = _present(source, source)
        if miss is not None:
            return [miss], [source]
        try:
            src, out = _source_from_mapping(_source_mapping(Path(source).expanduser()), source)
        except ConfigError as e:
            return [_from_error(e, source)], [source]
        if src is None:
            return out, [source]
        return out + check_source(src, source), [source, *source_files(src)]
    src = DataSource(interactions=source, dedupe="last")
    return check_source(src, source), [source]


def summary(problems: list[Problem], files: list[str]) -> str:
    """``2 errors, 1 warning in events.csv, items.csv`` (the files with problems), or
    ``no problems in ...`` (the files checked)."""
    def n(k: int, word: str) -> str:
        return f"{k} {word}{'' if k == 1 else 's'}"

    if not problems:
        return f"no problems in {', '.join(Path(f).name for f in files)}"
    errors = sum(p.severity == "error" for p in problems)
    named = list(dict.fromkeys(Path(p.file).name for p in problems))
    return f"{n(errors, 'error')}, {n(len(problems) - errors, 'warning')} in {', '.join(named)}"

"""``driftline init``: a small project of the user's own, declaring one pipeline.

The project (from the templates in ``driftline/tools/templates/``) holds a pipeline module
(a payments-like event with a field named ``amount-eur``, a few features among them
windowed aggregates, a River model factory, a fallback), a sample producer, a
``pyproject.toml`` that registers the module in the ``driftline.pipelines`` entry-point
group, a README with the commands to run it, and a pytest test that replays a few events
through :class:`streams.engine.FeatureEngine` and checks their features.

>>> project = plan("/tmp/payments-feed", topic="payments")
>>> project.name, project.package, project.distribution, project.events_topic
('payments_feed', 'payments_feed', 'payments-feed', 'payments')
>>> try:
...     plan("/tmp/x", name="Payments")
... except ScaffoldError as exc:
...     print(exc)
pipeline name 'Payments': use lower-case letters, digits and _, starting with a letter
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streams.pipelines import PIPELINES, PipelineLoadError

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# Top-level packages a project's own package must not shadow (Driftline's, and Python's).
TAKEN = {"driftline", "streams", "agents", "serving", "online_models", "monitoring", "tests",
         "river", "pydantic", "faust", *sys.stdlib_module_names}

# template -> where it goes in the project ("{package}" is the project's package)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "package_init.py.tmpl": "{package}/__init__.py",
    "pipeline.py.tmpl": "{package}/pipeline.py",
    "produce.py.tmpl": "produce.py",
    "test_pipeline.py.tmpl": "tests/test_pipeline.py",
}


class ScaffoldError(ValueError):
    """The project cannot be written as asked: the message says why."""


@dataclass(frozen=True)
class Project:
    root: Path
    name: str                  # the pipeline's
    package: str               # the project's Python package
    distribution: str          # the project's name in pyproject.toml
    events_topic: str | None   # None: Driftline's "<name>.events", namespaced
    labels_topic: str | None

    @property
    def module_path(self) -> Path:
        """The pipeline module: what ``DRIFTLINE_PIPELINES`` names."""
        return self.root / self.package / "pipeline.py"

    def values(self) -> dict[str, str]:
        lines = ""
        if self.events_topic:
            lines += (f'    events_topic="{self.events_topic}",  # an existing topic of yours, '
                      f"used as named (no namespace)\n")
        if self.labels_topic:
            lines += (f'    labels_topic="{self.labels_topic}",  # an existing topic of yours, '
                      f"used as named (no namespace)\n")
        if not lines:
            lines = (f'    # events_topic="payments",  # read an existing topic; default: '
                     f'"{self.name}.events" (namespaced)\n')
        return {
            "name": self.name, "NAME": self.name.upper(), "package": self.package,
            "distribution": self.distribution, "topic_lines": lines,
            "events_where": (f"your topic `{self.events_topic}`" if self.events_topic else
                             f"the topic `{self.name}.events`"),
            "labels_where": (f"the topic `{self.labels_topic}`" if self.labels_topic else
                             f"the topic `{self.name}.labels`"),
        }


def plan(directory: str | Path, name: str | None = None, topic: str | None = None,
         labels_topic: str | None = None) -> Project:
    """The project to write in ``directory``: names checked, defaults from the directory's."""
    root = Path(directory).expanduser().absolute()
    stem = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_")
    if not stem or not stem[0].isalpha():
        stem = f"pipeline_{stem}".rstrip("_")
    name = stem if name is None else name
    if not NAME.fullmatch(name) or name.upper() in ("MINUTE", "HOUR"):
        raise ScaffoldError(f"pipeline name {name!r}: use lower-case letters, digits and _, "
                            "starting with a letter")
    package = stem if stem not in TAKEN and not keyword.iskeyword(stem) else f"{stem}_pipelines"
    for what, value in (("--topic", topic), ("--labels-topic", labels_topic)):
        if value is not None and (not TOPIC.fullmatch(value) or value in (".", "..")):
            raise ScaffoldError(f"{what} {value!r} is not a Kafka topic name (letters, "
                                "digits, '.', '_', '-'; at most 249)")
    if topic is not None and topic == labels_topic:
        raise ScaffoldError(f"--topic and --labels-topic are both {topic!r}")
    distribution = re.sub(r"_+", "-", stem)
    return Project(root, name, package, distribution, topic, labels_topic)


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{key}}`` replaced.

    >>> render("x = {{a}}{{b}}", {"a": "1", "b": "2"})
    'x = 12'
    """
    def value(match: re.Match) -> str:
        return values[match.group(1)]

    return re.sub(r"\{\{(\w+)\}\}", value, template)


def write(project: Project) -> list[Path]:
    """Write the project; the files written. Refuses a directory that is not empty, and a
    pipeline name another declaration has."""
    root = project.root
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        raise ScaffoldError(f"{root} is not empty; init writes into a new or empty "
                            "directory only")
    try:
        taken = project.name in PIPELINES
    except PipelineLoadError:  # a broken module of DRIFTLINE_PIPELINES: not ours to judge
        taken = False
    if taken:
        raise ScaffoldError(f"a pipeline named {project.name!r} is declared already; choose "
                            "another with --name")
    values = project.values()
    templates = resources.files("driftline.tools") / "templates"
    written = []
    for template, target in FILES.items():
        path = root / target.format(package=project.package)
        text = render((templates / template).read_text(encoding="utf-8"), values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

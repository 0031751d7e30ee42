"""Notification text and Block Kit rendering (pure).

``render_deployment`` and ``render_violation`` turn a ``synctrail.deployment/v1`` or
``synctrail.violation/v1`` record into ``(text, blocks)``, ``render_health`` a health transition
(a ``synctrail.dora/v1`` record of kind ``health_transition``) into a short one: ``text`` is the top-level fallback a
phone notification shows (always set, always names the app and the revision), ``blocks`` the
Block Kit message. The layout puts what needs attention first: the header, then policy
violations, then a failure, then the summary, image changes, running images and resources.

Slack's limits are respected by construction: at most ``MAX_BLOCKS`` blocks, every mrkdwn text
at most ``MAX_TEXT`` characters, a header at most ``MAX_HEADER``, a field at most ``MAX_FIELD``.
Long lists end with "… and N more". Lengths are counted in UTF-16 code units (what Slack's
JavaScript counts; never less than Python's ``len``), cuts never split a grapheme (combining
marks, ZWJ emoji sequences, flags, variation selectors), and ``&``, ``<``, ``>`` are escaped
before measuring, so no cut ever lands inside an entity or a link.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from streams.domain.records import JsonObject

MAX_BLOCKS = 50
MAX_TEXT = 3000
MAX_HEADER = 150
MAX_FIELD = 2000
MAX_FIELDS = 10
MAX_FALLBACK = 3000

# Lines shown per list before "… and N more": enough for a normal deploy, short enough to read.
MAX_IMAGE_LINES = 30
MAX_RESOURCE_LINES = 25
MAX_LINE = 400  # longest inline code span, after escaping
MAX_MESSAGE = 600  # an operation message quoted in a failure section

ELLIPSIS = "…"

_GIT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_WHITESPACE = re.compile(r"\s+")

# Order in which changed resources are listed: what needs a look first.
_CHANGE_ORDER = {
    "sync_failed": 0,
    "pruned": 1,
    "prune_skipped": 2,
    "replaced": 3,
    "created": 4,
    "configured": 5,
    "change_unknown": 6,
}
_CHANGE_LABEL = {
    "sync_failed": "failed to sync",
    "pruned": "pruned",
    "prune_skipped": "left running (prune skipped)",
    "replaced": "replaced",
    "created": "created",
    "configured": "configured",
    "change_unknown": "applied (server-side; change unknown)",
}


# --------------------------------------------------------------------------- text primitives


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_len(text: str) -> int:
    """Length as Slack counts it: UTF-16 code units (an emoji outside the BMP counts 2)."""
    if text.isascii():  # the common case, without encoding
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _is_extender(ch: str) -> bool:
    """True for a code point that belongs to the grapheme before it."""
    code = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or code == 0x200D  # zero-width joiner
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def safe_cut(text: str, index: int) -> int:
    """The largest cut position ``<= index`` that does not split a grapheme of ``text``."""
    index = max(0, min(index, len(text)))
    while 0 < index < len(text):
        ch, before = text[index], text[index - 1]
        if _is_extender(ch) or before == "\u200d" or (before == "\r" and ch == "\n"):
            index -= 1
            continue
        if _is_regional(ch) and _is_regional(before):
            # Flags are pairs of regional indicators: count the run to see if we are mid-pair.
            run = 0
            while index - run - 1 >= 0 and _is_regional(text[index - run - 1]):
                run += 1
            if run % 2 == 1:
                index -= 1
                continue
        break
    return index


def fit(raw: str, limit: int, *, mrkdwn: bool = True) -> str:
    """``raw`` escaped (for mrkdwn) and cut to at most ``limit`` UTF-16 units, ending in "…".

    The cut is made on the raw text, so it can never fall inside ``&amp;`` or split a grapheme.
    """
    out = escape(raw) if mrkdwn else raw
    if slack_len(out) <= limit:
        return out
    budget = limit - slack_len(ELLIPSIS)
    used = 0
    cut = 0
    for i, ch in enumerate(raw):
        piece = escape(ch) if mrkdwn else ch
        cost = slack_len(piece)
        if used + cost > budget:
            cut = i
            break
        used += cost
    cut = safe_cut(raw, cut)
    head = raw[:cut].rstrip()
    return (escape(head) if mrkdwn else head) + ELLIPSIS


def one_line(text: str | None) -> str:
    """Collapse whitespace (a multi-line kubectl message) into single spaces."""
    return _WHITESPACE.sub(" ", text or "").strip()


def code(raw: str, limit: int = MAX_LINE) -> str:
    """An inline code span; backticks inside would end it early, so they become quotes."""
    inner = fit(raw.replace("`", "'"), limit)
    return f"`{inner}`"


def link(url: str, label: str) -> str:
    """A mrkdwn link ``<url|label>`` (label escaped; ``|`` would end the URL part)."""
    return f"<{escape(url)}|{fit(label.replace('|', '/'), 200)}>"


def bullet_list(
    title: str, lines: Sequence[str], *, limit: int = MAX_TEXT, max_lines: int | None = None
) -> str:
    """``title`` then one "• line" per entry, within ``limit``, ending "… and N more" if cut.

    ``title`` and ``lines`` are mrkdwn already (escaped); their pieces are capped where they are
    built, so a line is never longer than a few hundred characters.
    """
    shown: list[str] = []
    used = slack_len(title)
    cap = len(lines) if max_lines is None else min(max_lines, len(lines))
    for i, line in enumerate(lines):
        rest = len(lines) - i
        more = f"\n{ELLIPSIS} and {rest} more"
        entry = f"\n• {line}"
        # Keep room for the "… and N more" trailer unless this is the last line.
        reserve = 0 if rest == 1 else slack_len(more)
        if i >= cap or used + slack_len(entry) + reserve > limit:
            shown.append(more)
            break
        shown.append(entry)
        used += slack_len(entry)
    return title + "".join(shown)


# --------------------------------------------------------------------------- blocks


def header(text: str) -> JsonObject:
    """A header block (plain text, emoji allowed, at most ``MAX_HEADER``)."""
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": fit(text, MAX_HEADER, mrkdwn=False), "emoji": True},
    }


def section(text: str) -> JsonObject:
    """A mrkdwn section; ``text`` is mrkdwn already and is cut to ``MAX_TEXT`` if needed."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip_mrkdwn(text, MAX_TEXT)}}


def fields_section(fields: Sequence[tuple[str, str]]) -> JsonObject:
    """A section of up to ten ``*label*\\nvalue`` fields (mrkdwn values)."""
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": _clip_mrkdwn(f"*{label}*\n{value}", MAX_FIELD)}
            for label, value in fields[:MAX_FIELDS]
        ],
    }


def context(parts: Iterable[str]) -> JsonObject:
    """A context block with one mrkdwn element holding ``parts`` joined by " · "."""
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": _clip_mrkdwn(" · ".join(parts), MAX_TEXT)}],
    }


def divider() -> JsonObject:
    """A divider block."""
    return {"type": "divider"}


def _clip_mrkdwn(text: str, limit: int) -> str:
    """Last-resort cut of assembled mrkdwn: only at a line break, never inside a link/entity."""
    if slack_len(text) <= limit:
        return text
    budget = limit - slack_len(f"\n{ELLIPSIS}")
    lines = text.split("\n")
    kept: list[str] = []
    used = 0
    for line in lines:
        cost = slack_len(line) + (1 if kept else 0)
        if used + cost > budget:
            break
        kept.append(line)
        used += cost
    if not kept:  # one huge line: it has no structure worth keeping, cut it as text
        return fit(_unescape(text), limit)
    return "\n".join(kept) + f"\n{ELLIPSIS}"


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def limit_blocks(blocks: list[JsonObject]) -> list[JsonObject]:
    """At most ``MAX_BLOCKS`` blocks; the last one says how many were left out."""
    if len(blocks) <= MAX_BLOCKS:
        return blocks
    kept = blocks[: MAX_BLOCKS - 1]
    return [*kept, context([f"{ELLIPSIS} and {len(blocks) - len(kept)} more blocks"])]


# --------------------------------------------------------------------------- revisions & links


def short_revision(revision: str) -> str:
    """A git SHA shortened to 7 characters; chart versions and other revisions as they are."""
    return revision[:7] if _GIT_SHA.fullmatch(revision) else revision


def revision_label(deployment: Mapping[str, Any]) -> str:
    """The revision as a person reads it: ``c80b448``, ``4.10.1`` or ``2.7.0 + d6dd5b1``."""
    revision = deployment.get("revision") or ""
    if revision:
        return short_revision(revision)
    revisions = [r for r in deployment.get("revisions") or [] if r]
    return " + ".join(short_revision(r) for r in revisions) or "unknown revision"


def _repo_web_url(repo_url: str) -> tuple[str, str] | None:
    """``(https base URL, host)`` of a git remote (https, ssh or scp-like), or None."""
    url = repo_url.strip()
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(?!\d+/)(.+)", url)
    if scp:
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    path = path.strip("/")
    path = path.removesuffix(".git")
    if not host or not path:
        return None
    return f"https://{host.lower()}/{path}", host.lower()


def commit_url(repo_url: str | None, sha: str) -> str | None:
    """The commit page of ``sha`` on GitHub, GitLab or Bitbucket (cloud); None otherwise."""
    if not repo_url or not _GIT_SHA.fullmatch(sha):
        return None
    web = _repo_web_url(repo_url)
    if web is None:
        return None
    base, host = web
    if host == "github.com" or host.startswith("github."):
        return f"{base}/commit/{sha}"
    if host == "gitlab.com" or host.startswith("gitlab."):
        return f"{base}/-/commit/{sha}"
    if host == "bitbucket.org":
        return f"{base}/commits/{sha}"
    return None


def _repo_name(repo_url: str) -> str:
    web = _repo_web_url(repo_url)
    return web[0].split("/", 3)[-1] if web else repo_url


def _source_url(source: Mapping[str, Any]) -> str:
    return str(source.get("repo_url") or source.get("repoURL") or "")


def revision_lines(deployment: Mapping[str, Any]) -> list[str]:
    """One mrkdwn line per source: commit links for git SHAs, chart versions as versions."""
    revision = deployment.get("revision") or ""
    source = deployment.get("source") or None
    sources = [s for s in deployment.get("sources") or [] if isinstance(s, Mapping)]
    if revision or not deployment.get("revisions"):
        pairs = [(source if isinstance(source, Mapping) else None, revision)]
    else:
        revisions = list(deployment.get("revisions") or [])
        pairs = [(sources[i] if i < len(sources) else None, r) for i, r in enumerate(revisions)]
    lines = []
    for src, rev in pairs:
        if not rev:
            lines.append("_unknown_")
            continue
        if src and src.get("chart"):
            lines.append(f"chart {code(str(src['chart']), 100)} {code(rev, 100)}")
            continue
        repo = _source_url(src) if src else ""
        url = commit_url(repo, rev)
        shown = link(url, short_revision(rev)) if url else code(short_revision(rev), 100)
        lines.append(f"{shown} in {fit(_repo_name(repo), 150)}" if repo else shown)
    return lines


def argocd_app_url(argocd_url: str, app_namespace: str, app: str) -> str | None:
    """``{argocd_url}/applications/{app_namespace}/{app}``, or None without a base URL."""
    base = argocd_url.strip().rstrip("/")
    if not base:
        return None
    return f"{base}/applications/{quote(app_namespace, safe='')}/{quote(app, safe='')}"


# --------------------------------------------------------------------------- pieces of a deploy


def _resource_name(resource: Mapping[str, Any]) -> str:
    namespace = resource.get("namespace") or ""
    name = resource.get("name") or ""
    return f"{namespace}/{name}" if namespace else name


def _resource_line(resource: Mapping[str, Any], what: str) -> str:
    return f"{fit(str(resource.get('kind') or '?'), 80)} {code(_resource_name(resource), 200)} — {what}"


def _image_suffix(repository: str, ref: str) -> str:
    """``ref`` without its repository (``:1.2``, ``@sha256:abcd…``), digests shortened."""
    rest = ref[len(repository) :] if ref.startswith(repository) else ref
    tag, at, digest = rest.partition("@")
    if at and ":" in digest:
        algo, _, hexpart = digest.partition(":")
        digest = f"{algo}:{hexpart[:12]}{ELLIPSIS}" if len(hexpart) > 12 else digest
        return f"{tag}@{digest}"
    return rest


def _initiator(operation: Mapping[str, Any]) -> str:
    by = operation.get("initiated_by") or {}
    if by.get("username"):
        return fit(str(by["username"]), 200)
    return "auto-sync" if by.get("automated") else "unknown"


def _destination(deployment: Mapping[str, Any]) -> str:
    destination = deployment.get("destination")
    if not destination:  # a bare syncResult does not say where the app deploys to
        return "_unknown_"
    namespace = destination.get("namespace") or ""
    cluster = destination.get("name") or ""
    server = destination.get("server") or ""
    if not cluster and server:
        cluster = "in-cluster" if server == "https://kubernetes.default.svc" else server
    where = code(namespace, 200) if namespace else "_cluster-scoped_"
    return f"{where} on {fit(cluster, 200)}" if cluster else where


def _violation_lines(violations: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for v in violations:
        rule = fit(str(v.get("rule") or "policy"), 40)
        rule_id = v.get("rule_id")
        which = f"{rule} rule {code(str(rule_id), 100)}" if rule_id else f"{rule} rule"
        reason = fit(one_line(str(v.get("reason") or "")), 200) or "no reason given"
        lines.append(f"{code(str(v.get('image') or '?'), 200)} — {reason} ({which})")
    return lines


def _failure_blocks(deployment: Mapping[str, Any]) -> list[JsonObject]:
    operation = deployment.get("operation") or {}
    phase = str(operation.get("phase") or "Unknown")
    retries = int(operation.get("retry_count") or 0)
    after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    text = f":x: *Sync {fit(phase, 40)}*{after}"
    message = one_line(operation.get("message"))
    if message:
        text += f"\n>{fit(message, MAX_MESSAGE)}"
    blocks = [section(text)]
    failed = deployment.get("failed_resources") or []
    if failed:
        lines = []
        for r in failed:
            hook = f" ({fit(str(r['hook_type']), 30)} hook)" if r.get("hook_type") else ""
            why = fit(one_line(r.get("message")), 250) or "failed"
            line = f"{_resource_line(r, why)}{hook}"
            images = r.get("images") or []
            if images:
                line += "; not applied: " + ", ".join(code(i, 120) for i in images[:3])
            lines.append(line)
        blocks.append(section(bullet_list(f"*Failed resources ({len(failed)})*", lines)))
    return blocks


def _image_blocks(deployment: Mapping[str, Any]) -> list[JsonObject]:
    changed = deployment.get("images_changed") or []
    added = deployment.get("images_added") or []
    removed = deployment.get("images_removed") or []
    blocks = []
    if changed:
        lines = [
            f"{code(c['repository'], 200)}: {code(_image_suffix(c['repository'], c['from']), 90)}"
            f" → {code(_image_suffix(c['repository'], c['to']), 90)}"
            for c in changed
        ]
        blocks.append(section(bullet_list("*Image changes*", lines, max_lines=MAX_IMAGE_LINES)))
    # On a first deploy every image is "added": the running list below says it once.
    if added and not deployment.get("initial"):
        lines = [code(i) for i in added]
        blocks.append(section(bullet_list("*Added*", lines, max_lines=MAX_IMAGE_LINES)))
    if removed:
        lines = [code(i) for i in removed]
        blocks.append(section(bullet_list("*Removed*", lines, max_lines=MAX_IMAGE_LINES)))
    if not blocks and not deployment.get("initial"):
        blocks.append(section("*Image changes*\n_none_"))
    return blocks


def _running_block(deployment: Mapping[str, Any]) -> JsonObject:
    images = list(dict.fromkeys(deployment.get("images") or []))  # de-duplicated, order kept
    title = f"*Running images ({len(images)})*"
    if deployment.get("initial"):
        title += " — first deploy: all new"
    if not images:
        return section(f"{title}\n_none_")
    return section(bullet_list(title, [code(i) for i in images], max_lines=MAX_IMAGE_LINES))


def _resource_blocks(deployment: Mapping[str, Any]) -> list[JsonObject]:
    changed = sorted(
        deployment.get("resources_changed") or [],
        key=lambda r: _CHANGE_ORDER.get(str(r.get("change")), 9),
    )
    unchanged = int(deployment.get("resources_unchanged") or 0)
    title = f"*Changed resources ({len(changed)})* · {unchanged} unchanged"
    if not changed:
        return [section(f"{title}\n{'_nothing applied_' if _failed(deployment) else '_none_'}")]
    lines = [
        _resource_line(r, _CHANGE_LABEL.get(str(r.get("change")), fit(str(r.get("change")), 40)))
        for r in changed
    ]
    blocks = [section(bullet_list(title, lines, max_lines=MAX_RESOURCE_LINES))]
    unknown = sum(1 for r in changed if r.get("change") == "change_unknown")
    if unknown:
        blocks.append(
            context(
                [
                    f":information_source: Server-side apply does not say whether {unknown} "
                    f"object{'s' if unknown != 1 else ''} changed; the image changes above are "
                    "inferred from the images, not from kubectl's messages."
                ]
            )
        )
    return blocks


def _labels(deployment: Mapping[str, Any]) -> list[str]:
    labels = []
    if deployment.get("initial"):
        labels.append("first deploy")
    if deployment.get("rollback"):
        labels.append("rollback")
    return labels


def _failed(deployment: Mapping[str, Any]) -> bool:
    return str((deployment.get("operation") or {}).get("phase") or "Succeeded") != "Succeeded"


def _icon(deployment: Mapping[str, Any]) -> str:
    if deployment.get("violations"):
        return "🚨"
    if _failed(deployment):
        return "❌"
    if deployment.get("rollback"):
        return "⏪"
    if deployment.get("initial"):
        return "🆕"
    return "🚀"


def _fallback_text(deployment: Mapping[str, Any]) -> str:
    app = str(deployment.get("app") or "?")
    revision = revision_label(deployment)
    namespace = (deployment.get("destination") or {}).get("namespace") or ""
    where = f" to {namespace}" if namespace else ""
    phase = str((deployment.get("operation") or {}).get("phase") or "Succeeded")
    if _failed(deployment):
        text = f"{app}: sync {phase} at {revision}{where}"
    elif deployment.get("rollback"):
        text = f"{app} rolled back to {revision}{where}"
    elif deployment.get("initial"):
        text = f"{app} first deploy: {revision}{where}"
    else:
        text = f"{app} deployed {revision}{where}"
    count = len(deployment.get("images_changed") or []) + len(
        deployment.get("images_removed") or []
    )
    if not deployment.get("initial"):
        count += len(deployment.get("images_added") or [])
    if count:
        text += f" ({count} image change{'s' if count != 1 else ''})"
    violations = len(deployment.get("violations") or [])
    if violations:
        text = f"🚨 {violations} policy violation{'s' if violations != 1 else ''}: {text}"
    return fit(text, MAX_FALLBACK)


def _deployment_title(deployment: JsonObject) -> str:
    """Icon, app, revision, then the destination namespace and the labels when there are any."""
    app = str(deployment.get("app") or "?")
    title = f"{_icon(deployment)} {app} → {revision_label(deployment)}"
    dest_ns = (deployment.get("destination") or {}).get("namespace")
    if dest_ns:
        title += f" · {dest_ns}"
    labels = _labels(deployment) + (["FAILED"] if _failed(deployment) else [])
    if labels:
        title += " · " + ", ".join(labels)
    return title


def _violations_blocks(deployment: JsonObject) -> list[JsonObject]:
    """The policy violations first, when there are any."""
    violations = deployment.get("violations") or []
    if not violations:
        return []
    return [
        section(
            bullet_list(
                f":rotating_light: *Policy violations ({len(violations)})*",
                _violation_lines(violations),
                max_lines=MAX_IMAGE_LINES,
            )
        ),
        divider(),
    ]


def _deployment_fields(deployment: JsonObject, app_url: str | None) -> JsonObject:
    """App, revision (and the previous one), destination, project, initiator and status."""
    app = str(deployment.get("app") or "?")
    app_namespace = str(deployment.get("app_namespace") or "")
    operation = deployment.get("operation") or {}
    qualified = f"{app_namespace}/{app}" if app_namespace else app
    revision = "\n".join(revision_lines(deployment))
    previous = deployment.get("previous_revision") or " + ".join(
        short_revision(r) for r in deployment.get("previous_revisions") or []
    )
    if previous and not deployment.get("initial"):
        revision += f"\nwas {code(short_revision(previous), 100)}"
    fields = [
        ("App", link(app_url, qualified) if app_url else code(qualified, 200)),
        ("Revision", revision),
        ("Destination", _destination(deployment)),
        (
            "Project",
            code(str(deployment.get("project")), 100) if deployment.get("project") else "_none_",
        ),
        ("Synced by", _initiator(operation)),
        (
            "Status",
            f"{fit(str(operation.get('phase') or '?'), 40)}"
            f" · {fit(str(deployment.get('health') or 'health unknown'), 40)}",
        ),
    ]
    return fields_section(fields)


def _invalid_images_block(deployment: JsonObject) -> list[JsonObject]:
    """A warning naming the image references that do not parse, when there are any."""
    invalid = deployment.get("invalid_images") or []
    if not invalid:
        return []
    shown = ", ".join(
        f"{code(str(i.get('image') or '?'), 150)} in {code(str(i.get('resource') or '?'), 150)}"
        for i in invalid[:5]
    )
    more = f" {ELLIPSIS} and {len(invalid) - 5} more" if len(invalid) > 5 else ""
    return [context([f":warning: image references that do not parse (not counted): {shown}{more}"])]


def _deployment_footer(deployment: JsonObject, app_url: str | None) -> list[JsonObject]:
    """Hook images, the Argo CD link, when the operation finished and the delivery id."""
    operation = deployment.get("operation") or {}
    hooks = deployment.get("hook_images") or []
    footer = []
    if hooks:
        footer.append("hook images: " + ", ".join(code(i, 200) for i in hooks[:5]))
        if len(hooks) > 5:
            footer[-1] += f" {ELLIPSIS} and {len(hooks) - 5} more"
    if app_url:
        footer.append(link(app_url, "Open in Argo CD"))
    if operation.get("finished_at"):
        footer.append(f"finished {fit(str(operation['finished_at']), 40)}")
    if deployment.get("delivery_id"):
        footer.append(f"delivery {code(str(deployment['delivery_id']), 80)}")
    return [context(footer)] if footer else []


# --------------------------------------------------------------------------- public API


def render_deployment(
    deployment: JsonObject, *, argocd_url: str = ""
) -> tuple[str, list[JsonObject]]:
    """Fallback text and Block Kit blocks for one ``synctrail.deployment/v1`` record."""
    app = str(deployment.get("app") or "?")
    app_namespace = str(deployment.get("app_namespace") or "")
    app_url = argocd_app_url(argocd_url, app_namespace, app)
    blocks: list[JsonObject] = [header(_deployment_title(deployment))]
    blocks.extend(_violations_blocks(deployment))
    if _failed(deployment):
        blocks.extend(_failure_blocks(deployment))
    blocks.append(_deployment_fields(deployment, app_url))
    blocks.append(divider())
    blocks.extend(_image_blocks(deployment))
    blocks.append(_running_block(deployment))
    blocks.extend(_resource_blocks(deployment))
    blocks.extend(_invalid_images_block(deployment))
    blocks.extend(_deployment_footer(deployment, app_url))
    return _fallback_text(deployment), limit_blocks(blocks)


def render_violation(
    violation: JsonObject, *, argocd_url: str = ""
) -> tuple[str, list[JsonObject]]:
    """Fallback text and Block Kit blocks for one policy violation (typically retroactive)."""
    app = str(violation.get("app") or "?")
    app_namespace = str(violation.get("app_namespace") or "")
    image = str(violation.get("image") or "?")
    rule = str(violation.get("rule") or "policy")
    reason = one_line(str(violation.get("reason") or "")) or "no reason given"
    revision = revision_label(violation)
    detected = str(violation.get("detected") or "")
    when = "already running" if detected == "retroactive" else "deployed"

    text = fit(
        f"🚨 Policy violation: {app} ({revision}) {when} {image}: {rule} — {reason}",
        MAX_FALLBACK,
    )
    qualified = f"{app_namespace}/{app}" if app_namespace else app
    app_url = argocd_app_url(argocd_url, app_namespace, app)
    blocks: list[JsonObject] = [
        header(f"🚨 Policy violation · {app} → {revision}"),
        section(
            f":rotating_light: {code(image)} {when} breaks the {fit(rule, 40)} rule"
            + (f" {code(str(violation['rule_id']), 100)}" if violation.get("rule_id") else "")
            + f"\n>{fit(reason, MAX_MESSAGE)}"
        ),
        fields_section(
            [
                ("App", link(app_url, qualified) if app_url else code(qualified, 200)),
                ("Revision", code(revision, 200)),
                (
                    "Project",
                    code(str(violation.get("project")), 100)
                    if violation.get("project")
                    else "_none_",
                ),
                ("Detected", fit(detected or "unknown", 40)),
            ]
        ),
    ]
    footer = []
    if app_url:
        footer.append(link(app_url, "Open in Argo CD"))
    if violation.get("detected_at"):
        footer.append(f"detected {fit(str(violation['detected_at']), 40)}")
    if footer:
        blocks.append(context(footer))
    return text, limit_blocks(blocks)


def duration_label(seconds: float) -> str:
    """A duration as a person says it, rounded down: ``45 s``, ``12 min``, ``2 h 5 min``,
    ``3 d 4 h``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _health_phrase(health: str) -> tuple[str, str]:
    """The icon and the words of a transition to ``health``."""
    if health == "Healthy":
        return "✅", "healthy again"
    if health == "Degraded":
        return "🔴", "degraded"
    return "🩺", f"now {one_line(health) or 'of unknown health'}"


def render_health(
    transition: JsonObject, app: Mapping[str, Any], *, argocd_url: str = ""
) -> tuple[str, list[JsonObject]]:
    """Fallback text and blocks for one health transition after a deploy.

    ``transition`` is the ``synctrail.dora/v1`` record (kind ``health_transition``), ``app``
    the app's state (its name, namespace and revisions). The text reads "guestbook degraded 12
    min after deploy 1a2b3c4" ("healthy again" for a return to Healthy); without the time since
    the deploy it leaves the duration out.
    """
    name = str(app.get("app") or str(transition.get("app") or "?").rpartition("/")[2])
    app_namespace = str(app.get("app_namespace") or "")
    revision = transition.get("revision")
    label = short_revision(str(revision)) if revision else revision_label(app)
    icon, words = _health_phrase(str(transition.get("health") or ""))
    seconds = transition.get("seconds")
    after = f"{duration_label(float(seconds))} after" if seconds is not None else "after"
    text = fit(f"{name} {words} {after} deploy {label}", MAX_FALLBACK)
    app_url = argocd_app_url(argocd_url, app_namespace, name)
    footer = []
    if app_url:
        footer.append(link(app_url, "Open in Argo CD"))
    if transition.get("previous_health"):
        footer.append(f"was {fit(str(transition['previous_health']), 40)}")
    if transition.get("at"):
        footer.append(f"observed {fit(str(transition['at']), 40)}")
    blocks = [
        section(f"{icon} *{fit(name, 200)}* {fit(words, 100)} {after} deploy {code(label, 200)}")
    ]
    if footer:
        blocks.append(context(footer))
    return text, blocks

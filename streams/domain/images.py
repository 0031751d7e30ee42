"""Container image references: parse and normalise them as Docker does (pure).

The grammar is the one of ``distribution/reference`` (what Docker, containerd and the kubelet
use)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ registry "/" ] path
    registry   := host [ ":" port ]          host: DNS name, IPv4 or [IPv6]
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex

Normalisation is Docker's ``ParseNormalizedNamed``: the first path segment is a registry only
if it contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter (paths never do);
otherwise the registry is ``docker.io``, and a one-segment Docker Hub path gets ``library/``.
``index.docker.io`` is the legacy name of ``docker.io``. With neither tag nor digest the tag is
``latest``; a tag given together with a digest is kept (the digest identifies the image, the
tag says what it was called). So ``nginx`` == ``docker.io/library/nginx:latest``.

Written here rather than taken from PyPI: ``docker-image-py`` (the one port of this grammar)
returned nothing for tag+digest references in the versions we could read and needs the
``regex`` package; the ``docker`` SDK only splits strings without validating. The grammar is
a handful of regular expressions; the tests pin every rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
# distribution/reference's limit on the whole normalised name (registry + "/" + path).
NAME_MAX_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_REGISTRY_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ALGORITHM_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_ANY_HEX_RE = re.compile(r"[0-9a-fA-F]{32,}")
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
# go-digest's registered algorithms: exact length, lower-case hex (it refuses anything else).
_KNOWN_DIGESTS = {"sha256": 64, "sha384": 96, "sha512": 128}
_WHITESPACE_RE = re.compile(r"\s")


class InvalidImageReference(ValueError):
    """An image reference that does not follow Docker's reference grammar."""

    def __init__(self, reference: object, problem: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {problem}")
        self.reference = reference
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference."""

    registry: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """The normalised name without tag or digest, e.g. ``docker.io/library/nginx``."""
        return f"{self.registry}/{self.path}"

    def __str__(self) -> str:
        text = self.repository
        if self.tag is None and self.digest is None:
            return f"{text}:{DEFAULT_TAG}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def split_registry(name: str) -> tuple[str, str]:
    """Split a name into (registry, path) by Docker's rule, defaults applied.

    The first segment is a registry only if it contains ``.`` or ``:``, is ``localhost`` or is
    not all lower-case; ``index.docker.io`` becomes ``docker.io`` and one-segment Docker Hub
    paths get ``library/``. Nothing is validated here (policy globs use it too).
    """
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return registry, path


def split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """Split ``name[:tag][@digest]`` into its three parts without validating them."""
    name, at, digest = reference.partition("@")
    tag: str | None = None
    colon = name.rfind(":")
    # A colon before the last slash is a registry port, not a tag separator.
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, (digest if at else None)


def validate_digest(reference: object, digest: str) -> str:
    """Check ``algorithm:hex``; known algorithms need their exact length in lower-case hex."""
    algorithm, colon, hex_part = digest.partition(":")
    if not colon or not _ALGORITHM_RE.fullmatch(algorithm):
        raise InvalidImageReference(reference, f"digest {digest!r} is not algorithm:hex")
    expected = _KNOWN_DIGESTS.get(algorithm)
    if expected is not None:
        if len(hex_part) != expected or not re.fullmatch(r"[0-9a-f]+", hex_part):
            raise InvalidImageReference(
                reference,
                f"digest {digest!r}: {algorithm} needs {expected} lower-case hex digits",
            )
    elif not _ANY_HEX_RE.fullmatch(hex_part):
        raise InvalidImageReference(
            reference, f"digest {digest!r}: needs at least 32 hex digits after the algorithm"
        )
    return digest


def parse_image(reference: str) -> ImageRef:
    """Parse and normalise an image reference; raise ``InvalidImageReference`` if it is bad."""
    if not isinstance(reference, str):
        raise InvalidImageReference(reference, f"expected a string, got {type(reference).__name__}")
    return _parse(reference)


# Cached: the same few hundred references arrive with every payload of every app.
@lru_cache(maxsize=65536)
def _parse(reference: str) -> ImageRef:
    if not reference:
        raise InvalidImageReference(reference, "empty")
    if _WHITESPACE_RE.search(reference):
        raise InvalidImageReference(reference, "contains whitespace")
    if reference.count("@") > 1:
        raise InvalidImageReference(reference, "more than one '@'")
    if _IDENTIFIER_RE.fullmatch(reference):
        # Docker refuses these: a bare 64-hex string is an image ID, not a name.
        raise InvalidImageReference(reference, "a 64-hex-digit image ID is not a repository name")

    name, tag, digest = split_reference(reference)
    if not name:
        raise InvalidImageReference(reference, "no repository name")
    registry, path = split_registry(name)
    if not _REGISTRY_RE.fullmatch(registry):
        raise InvalidImageReference(reference, f"registry {registry!r} is not host[:port]")
    if path != path.lower():
        raise InvalidImageReference(reference, f"repository path {path!r} must be lower-case")
    if not _PATH_RE.fullmatch(path):
        raise InvalidImageReference(
            reference,
            f"repository path {path!r} must be '/'-separated [a-z0-9] words "
            "joined by '.', '_', '__' or '-'",
        )
    if len(registry) + 1 + len(path) > NAME_MAX_LENGTH:
        raise InvalidImageReference(
            reference, f"repository name longer than {NAME_MAX_LENGTH} characters"
        )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise InvalidImageReference(
            reference, f"tag {tag!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        )
    if digest is not None:
        validate_digest(reference, digest)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry=registry, path=path, tag=tag, digest=digest)


def normalize_image(reference: str) -> str:
    """The normalised form of a reference (``nginx`` → ``docker.io/library/nginx:latest``)."""
    return str(parse_image(reference))


def try_parse_image(reference: str) -> ImageRef | None:
    """``parse_image``, or ``None`` when the reference is invalid."""
    try:
        return parse_image(reference)
    except InvalidImageReference:
        return None

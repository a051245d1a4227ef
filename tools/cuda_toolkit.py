"""A CUDA 12 toolkit for building the +cu12 wheel, fetched on demand (issue #23).

    python tools/cuda_toolkit.py [--cache DIR] [--archive URL]   # prints the toolkit's CUDA_HOME
    python tools/build_wheel.py --cu12 --out wheelhouse/        # builds the +cu12 wheel with it

Why CUDA 12: a node's driver older than R580 loads no CUDA 13 module (nor JITs its PTX), so
those clusters need a module built by a CUDA 12 toolkit. Debian 13 ("trixie") ships CUDA 12.4
in its non-free component; its .deb files unpack into any folder, so the toolkit comes from the
Debian archive this machine's apt already uses, with nothing installed system-wide:

- the archive's address is the machine's own Debian entry (its apt sources: the entry for the
  release it runs, see debian_archive()); --archive or FUSED_OPTIM_DEBIAN_ARCHIVE name another
  Debian mirror where the machine has none (an Ubuntu host);
- apt-get update / apt-get download run with a private sources list (trixie, main contrib
  non-free), lists, cache and preferences under the cache folder: the system's apt state and
  configuration stay as they are, and no root is needed;
- `dpkg -x` unpacks PACKAGES into the cache folder; the .deb files (about 1 GB, most of it
  nvidia-cuda-dev's static math libraries) are deleted afterwards, and so are the libraries
  nothing here links (PRUNE_KEEP), leaving about 0.3 GB;
- the package's nvcc.profile, a link to /etc/nvcc.profile, is replaced by one that names the
  unpacked folders relative to nvcc itself (so the cache folder may move), and the toolkit's
  programs are linked beside nvcc. The result is a CUDA_HOME as setup.py expects it: bin/nvcc,
  include/, lib64/libcudart_static.a.

The host compiler is Debian's choice: the package's g++ wrapper beside nvcc runs the newest
g++-NN that CUDA 12.4 supports (13 down to 6), the system's g++-12 on Debian 12.

The cache folder: --cache, else FUSED_OPTIM_CUDA12_CACHE, else
$XDG_CACHE_HOME/fused_optim/cuda-12-trixie (~/.cache/...). It is filled once (a minute and a
half: the download, then unpacking) and reused while its nvcc runs; delete it to fetch again.
x86-64 only (the wheels' platform; the packages' library folder is x86_64-linux-gnu).
"""
import argparse
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# nvcc and the programs it runs; the headers and static runtime; cicc's libnvvm; the runtime
# the dev package's links point at; libcu++'s <nv/target>, which cuda_fp16.h includes
PACKAGES = ("nvidia-cuda-toolkit", "nvidia-cuda-dev", "libnvvm4", "libcudart12", "libcu++-dev")
SUITE = "trixie"
COMPONENTS = "main contrib non-free"
# what the build needs of usr/lib/x86_64-linux-gnu: the runtime (setup.py links
# libcudart_static.a), the device runtime and libculibos nvcc may name, libnvvm
PRUNE_KEEP = ("libcudart", "libcudadevrt", "libculibos", "libnvvm")
# bumped when the unpacked layout changes, so an older cache is built again
LAYOUT = 2
# kernel parameter space of sm_70 and newer since CUDA 12.1 (4096 bytes before)
PARAM_LIMIT = 32764


class ToolkitError(Exception):
    """The toolkit could not be made; the message says why and what to do."""


class ArchiveUnavailable(ToolkitError):
    """No Debian archive to fetch from: no apt here, no Debian entry in its sources, or the
    archive could not be reached. A test skips on this one; other errors are failures."""


def default_cache() -> Path:
    if os.environ.get("FUSED_OPTIM_CUDA12_CACHE"):
        return Path(os.environ["FUSED_OPTIM_CUDA12_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fused_optim" / "cuda-12-trixie"


# ---- the Debian entry of the machine's apt sources -------------------------------------------

def os_codename(os_release: str) -> str:
    """VERSION_CODENAME of an /etc/os-release text ("bookworm"), or ""."""
    m = re.search(r'^VERSION_CODENAME="?([^"\n]*)"?$', os_release, re.M)
    return m.group(1) if m else ""


def parse_sources(path: Path, text: str) -> list:
    """The deb entries of one apt sources file, one-line (.list) or deb822 (.sources) format,
    as dicts with uris, suites, components and signed_by (or None)."""
    entries = []
    if path.suffix == ".sources":
        for stanza in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#"):
                    continue
                if line[:1].isspace() and key:  # a continuation (e.g. an inline key)
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append({"uris": fields.get("uris", "").split(), "suites": fields.get("suites", "").split(),
                            "components": fields.get("components", "").split(),
                            "signed_by": fields.get("signed-by") or None})
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.fullmatch(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
            if not m:
                continue
            options = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
            entries.append({"uris": [m.group(2)], "suites": [m.group(3)], "components": m.group(4).split(),
                            "signed_by": options.get("signed-by")})
    return entries


def pick_debian_entry(entries: list, codename: str):
    """(uri, signed_by) of the entry for the release itself (suite == codename, not -updates or
    -security) with component main. Other repositories may name the same suite (a vendor's
    "bookworm stable"), so an entry signed by Debian's archive keyring comes first; the
    Release file fetched from it must then say Origin: Debian (fetch())."""
    found = [(uri.rstrip("/"), e["signed_by"]) for e in entries if codename in e["suites"]
             and "main" in e["components"] for uri in e["uris"]]
    found.sort(key=lambda f: "debian-archive" not in (f[1] or ""))
    return found[0] if found else None


def apt_sources_files() -> list:
    """The machine's apt sources files, where its apt configuration says they are."""
    out = subprocess.run(["apt-config", "shell", "LIST", "Dir::Etc::sourcelist/f", "PARTS", "Dir::Etc::sourceparts/d"],
                         capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^(LIST|PARTS)='([^']*)'", out, re.M))
    files = [Path(paths["LIST"])] if paths.get("LIST") else []
    if paths.get("PARTS") and Path(paths["PARTS"]).is_dir():
        files += sorted(p for p in Path(paths["PARTS"]).iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def debian_archive():
    """(uri, signed_by) of the machine's Debian archive, from its apt configuration, or from
    FUSED_OPTIM_DEBIAN_ARCHIVE."""
    if os.environ.get("FUSED_OPTIM_DEBIAN_ARCHIVE"):
        return os.environ["FUSED_OPTIM_DEBIAN_ARCHIVE"].rstrip("/"), None
    if shutil.which("apt-config") is None:
        raise ArchiveUnavailable("cuda_toolkit: no apt here (apt-config not found): the toolkit comes from Debian's "
                                 "archive through apt-get; build on a Debian or Ubuntu machine")
    try:
        codename = os_codename(Path("/etc/os-release").read_text())
    except OSError:
        codename = ""
    entries = [e for f in apt_sources_files() for e in parse_sources(f, f.read_text(errors="replace"))]
    picked = pick_debian_entry(entries, codename) if codename else None
    if picked is None:
        raise ArchiveUnavailable(f"cuda_toolkit: the apt sources name no Debian archive for this release "
                                 f"({codename or 'no VERSION_CODENAME in /etc/os-release'}); give a Debian mirror's "
                                 "address with --archive URL or FUSED_OPTIM_DEBIAN_ARCHIVE")
    return picked


# ---- fetching and unpacking ------------------------------------------------------------------

def apt_options(state: Path) -> list:
    """apt-get options that keep every file apt writes, and the sources and preferences it
    reads, under `state`; keyrings and network settings (proxies) stay the system's."""
    options = {
        "Dir::Etc::SourceList": state / "sources.list",
        "Dir::Etc::SourceParts": state / "sources.list.d",
        "Dir::Etc::Preferences": state / "preferences",
        "Dir::Etc::PreferencesParts": state / "preferences.d",
        "Dir::State::Lists": state / "lists",
        "Dir::State::status": state / "status",  # nothing counts as installed
        "Dir::Cache": state / "cache",
        "Acquire::Retries": 1,
        "Acquire::http::Timeout": 30,
        "Acquire::Languages": "none",
        "APT::Update::Error-Mode": "any",  # apt >= 2.5: an index that fails is an error
    }
    if os.geteuid() == 0:
        # apt's sandbox user cannot write into a user's private folders; as root apt would
        # fall back to downloading as root anyway, with a warning
        options["APT::Sandbox::User"] = "root"
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


# apt's messages in English, which run_apt() reads
APT_ENV = dict(os.environ, LC_ALL="C")


def run_apt(args: list, cwd: Path, uri: str, what: str) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=APT_ENV)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        unreachable = re.search(r"Failed to fetch|Could not (connect|resolve)|Temporary failure|timed out|"
                                r"Unable to connect|Connection failed|\b(40[34]|50\d)\b", output)
        error = ArchiveUnavailable if unreachable else ToolkitError
        raise error(f"cuda_toolkit: {what} from {uri} ({SUITE}) failed:\n{output}")
    return result.stdout


def fetch(state: Path, downloads: Path, log) -> dict:
    """Downloads PACKAGES' .deb files from the machine's Debian archive (suite SUITE) into
    `downloads`; returns {package: version}."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ArchiveUnavailable("cuda_toolkit: apt-get and dpkg are needed (a Debian or Ubuntu machine)")
    uri, signed_by = debian_archive()
    for folder in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    (state / "preferences").touch()
    options = f"[signed-by={signed_by}] " if signed_by and "\n" not in signed_by else ""
    (state / "sources.list").write_text(f"deb {options}{uri} {SUITE} {COMPONENTS}\n")
    apt = ["apt-get", "-q"] + apt_options(state)

    log(f"cuda_toolkit: apt-get update for {uri} {SUITE} {COMPONENTS} (private lists under {state})")
    run_apt(apt + ["update"], state, uri, "apt-get update")
    releases = list((state / "lists").glob("*_InRelease")) + list((state / "lists").glob("*_Release"))
    if not releases:
        raise ArchiveUnavailable(f"cuda_toolkit: apt-get update got no Release file of {SUITE} from {uri}")
    if not re.search(r"^Origin: Debian$", releases[0].read_text(errors="replace"), re.M):
        raise ToolkitError(f"cuda_toolkit: {uri} is not a Debian archive (its {SUITE} Release file has no "
                           "'Origin: Debian'); name one with --archive URL or FUSED_OPTIM_DEBIAN_ARCHIVE")
    versions = {}
    for package in PACKAGES:
        policy = subprocess.run(["apt-cache"] + apt_options(state) + ["policy", package],
                                capture_output=True, text=True, env=APT_ENV).stdout
        m = re.search(r"Candidate: (\S+)", policy)
        if not m or m.group(1) == "(none)":
            raise ToolkitError(f"cuda_toolkit: {uri} {SUITE} has no package {package} (its non-free component "
                               "ships CUDA 12.4); is the mirror complete?")
        versions[package] = m.group(1)
    log(f"cuda_toolkit: downloading {', '.join(f'{p} {v}' for p, v in versions.items())} (about 1 GB)")
    downloads.mkdir(parents=True, exist_ok=True)
    run_apt(apt + ["download"] + list(PACKAGES), downloads, uri, "apt-get download")
    return versions


NVCC_PROFILE = """\
# written by tools/cuda_toolkit.py in place of the package's link to /etc/nvcc.profile:
# the unpacked toolkit, relative to this folder
NVVMIR_LIBRARY_DIR = $(_HERE_)/../libdevice
PATH += $(_HERE_):
INCLUDES += "-I$(_HERE_)/../../../include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(_HERE_)/../../x86_64-linux-gnu"
"""


def make_home(root: Path) -> Path:
    """Turns the unpacked packages under `root` into a CUDA_HOME: usr/lib/nvidia-cuda-toolkit
    with bin/nvcc (the real one, not /usr/bin's wrapper script), its profile, the programs it
    runs from usr/bin beside it, include/ and lib64/."""
    home = root / "usr" / "lib" / "nvidia-cuda-toolkit"
    profile = home / "bin" / "nvcc.profile"
    if profile.is_symlink() or profile.exists():
        profile.unlink()
    profile.write_text(NVCC_PROFILE)
    for program in (root / "usr" / "bin").iterdir():
        if program.name != "nvcc" and not (home / "bin" / program.name).exists():
            (home / "bin" / program.name).symlink_to(os.path.relpath(program.resolve(), home / "bin"))
    (home / "include").symlink_to("../../include")
    (home / "lib64").symlink_to("../x86_64-linux-gnu")
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    for lib in libs.iterdir():
        if lib.is_file() and not lib.name.startswith(PRUNE_KEEP):
            lib.unlink()
    return home


def nvcc_release(home: Path) -> str:
    """The toolkit's release ("12.4"), from its nvcc."""
    result = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True)
    m = re.search(r"release (\d+\.\d+)", result.stdout)
    if result.returncode != 0 or not m:
        raise ToolkitError(f"cuda_toolkit: {home}/bin/nvcc --version failed:\n{result.stdout}{result.stderr}")
    return m.group(1)


@contextmanager
def locked(cache: Path):
    """One process fills the cache at a time (parallel test workers, two builds)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(cache: Path = None, log=print) -> Path:
    """The CUDA_HOME of the cached toolkit, fetched and unpacked first when the cache has none
    (or one an older layout made, or whose nvcc no longer runs)."""
    if platform.machine() != "x86_64":
        raise ToolkitError(f"cuda_toolkit: x86-64 only, this machine is {platform.machine()}")
    cache = Path(cache or default_cache()).resolve()
    home = cache / "toolkit" / "usr" / "lib" / "nvidia-cuda-toolkit"
    manifest = cache / "toolkit.json"
    with locked(cache):
        if manifest.exists():
            try:
                if json.loads(manifest.read_text()).get("layout") == LAYOUT and nvcc_release(home).startswith("12."):
                    return home
            except (ValueError, ToolkitError):
                pass
            log(f"cuda_toolkit: the toolkit in {cache} is stale or broken: fetching it again")
            manifest.unlink()
        versions = fetch(cache / "apt", cache / "downloads", log)
        debs = sorted((cache / "downloads").glob("*.deb"))
        log(f"cuda_toolkit: unpacking {len(debs)} packages into {cache / 'toolkit'} (about a minute)")
        shutil.rmtree(cache / "toolkit", ignore_errors=True)
        unpacking = Path(tempfile.mkdtemp(prefix="unpacking-", dir=cache))
        try:
            for deb in debs:
                subprocess.run(["dpkg", "-x", str(deb), str(unpacking)], check=True)
            make_home(unpacking)
            unpacking.rename(cache / "toolkit")
        finally:
            shutil.rmtree(unpacking, ignore_errors=True)
        release = nvcc_release(home)
        if not release.startswith("12."):
            raise ToolkitError(f"cuda_toolkit: {SUITE}'s nvcc is release {release}, not CUDA 12")
        shutil.rmtree(cache / "downloads")
        manifest.write_text(json.dumps({"layout": LAYOUT, "release": release, "packages": versions}, indent=1) + "\n")
        log(f"cuda_toolkit: CUDA {release} ready in {home}")
        return home


# ---- what a built module holds ---------------------------------------------------------------

def cuda_images(module: Path, cuobjdump: str) -> dict:
    """What the fat binary of a built module holds, read with the toolkit's cuobjdump:
    {"sass": [sm_80, ...], "ptx": [compute_90, ...], "params": {sm_NN: {kernel: bytes}}}, the
    bytes being each kernel's parameter space as the machine code declares it
    (EIATTR_CBANK_PARAM_SIZE)."""
    def dump(*flags):
        result = subprocess.run([cuobjdump, *flags, str(module)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolkitError(f"cuda_toolkit: cuobjdump {' '.join(flags)} {module} failed:\n{result.stderr}")
        return result.stdout

    listing = dump("-lelf", "-lptx")
    sass = sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", listing)))
    ptx = sorted(set("compute_" + n for n in re.findall(r"\.sm_(\d+a?)\.ptx", listing)))
    params = {}
    arch = kernel = None
    wanted = False  # the next Value: line is the parameter size
    for line in dump("-elf").splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith(".nv.info."):
            kernel = line[len(".nv.info."):]
        elif line.startswith("Attribute:"):
            wanted = line.endswith("EIATTR_CBANK_PARAM_SIZE")
        elif line.startswith("Value:") and wanted:
            params.setdefault(arch, {})[kernel] = int(line.split()[1], 16)
            wanted = False
    return {"sass": sass, "ptx": ptx, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="the cache folder (default: FUSED_OPTIM_CUDA12_CACHE or "
                                                   f"{default_cache()})")
    parser.add_argument("--archive", help="a Debian mirror's address, in place of the one of this machine's apt sources")
    args = parser.parse_args()
    if args.archive:
        os.environ["FUSED_OPTIM_DEBIAN_ARCHIVE"] = args.archive
    try:
        home = ensure(args.cache, log=lambda line: print(line, file=sys.stderr, flush=True))
    except ToolkitError as e:
        sys.exit(str(e))
    print(home)


if __name__ == "__main__":
    main()

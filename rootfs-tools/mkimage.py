#!/usr/bin/env python3
"""Build a `docker save`-format tarball from a directory, without Docker.

    mkimage.py --rootfs DIR --cmd '["/test-handler"]' [--entrypoint '[...]']
               [--env K=V ...] [--workdir /] [--user 0] [--tag name:tag]
               --layout classic|oci [--compress none|gzip] [--layers 1|2] -o OUT.tar

Layouts:
  classic  <layer-id>/layer.tar (+ VERSION, json), <config-sha256>.json, manifest.json,
           repositories (what `docker save` wrote before Docker 25)
  oci      oci-layout, index.json, blobs/sha256/<digest> (layers, config, manifest),
           manifest.json, repositories (Docker 25 and later)

Output is deterministic: entries sorted, mtimes fixed (--mtime, default 0), owners 0:0
unless --keep-owner. Standard library only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile


def log(msg):
    print(f"mkimage: {msg}", file=sys.stderr)


def walk(rootfs):
    """All paths under rootfs (relative, sorted, parents first)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel = os.path.relpath(dirpath, rootfs)
        for name in sorted(dirnames + filenames):
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def split_layers(rootfs, paths, n):
    """Assign paths to n layers: directories and hardlinked files to layer 0, the other
    files alternately by halves (so that a later layer really adds on top of an earlier)."""
    if n <= 1:
        return [paths]
    first, second = [], []
    files = []
    for p in paths:
        st = os.lstat(os.path.join(rootfs, p))
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            first.append(p)
        else:
            files.append(p)
    half = len(files) // 2
    first.extend(files[:half])
    second.extend(files[half:])
    return [sorted(first), sorted(second)]


def write_layer(rootfs, paths, args, fileobj):
    def fix(ti):
        ti.mtime = args.mtime
        if not args.keep_owner:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
        return ti

    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in paths:
            full = os.path.join(rootfs, p)
            st = os.lstat(full)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                log(f"skipping special file {p}")
                continue
            tf.add(full, arcname=p, recursive=False, filter=fix)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_bytes(tf, name, data, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 0
    tf.addfile(ti, io.BytesIO(data))


def add_dir(tf, name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = 0
    tf.addfile(ti)


def add_file(tf, name, path):
    ti = tarfile.TarInfo(name)
    ti.size = os.path.getsize(path)
    ti.mode = 0o644
    ti.mtime = 0
    with open(path, "rb") as f:
        tf.addfile(ti, f)


def jdump(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--cmd", default=None, help="JSON list, e.g. '[\"/test-handler\"]'")
    ap.add_argument("--entrypoint", default=None, help="JSON list")
    ap.add_argument("--env", action="append", default=[], help="K=V (repeatable)")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--user", default="")
    ap.add_argument("--tag", default=None, help="repo:tag (default: OUT basename:latest)")
    ap.add_argument("--layout", choices=["classic", "oci"], required=True)
    ap.add_argument("--compress", choices=["none", "gzip"], default="none")
    ap.add_argument("--layers", type=int, choices=[1, 2], default=1)
    ap.add_argument("--mtime", type=int, default=0)
    ap.add_argument("--keep-owner", action="store_true")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    if not os.path.isdir(args.rootfs):
        ap.error(f"--rootfs {args.rootfs} is not a directory")
    for opt in ("cmd", "entrypoint"):
        v = getattr(args, opt)
        if v is not None:
            v = json.loads(v)
            if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                ap.error(f"--{opt} must be a JSON list of strings")
            setattr(args, opt, v)
    for e in args.env:
        if "=" not in e:
            ap.error(f"--env {e}: expected K=V")
    tag = args.tag or os.path.splitext(os.path.basename(args.output))[0] + ":latest"
    if ":" not in tag:
        tag += ":latest"
    repo, _, tagname = tag.rpartition(":")

    paths = walk(args.rootfs)
    groups = split_layers(args.rootfs, paths, args.layers)
    tmp = tempfile.mkdtemp(prefix="mkimage-")
    try:
        layers = []  # (blob path, blob digest, diff_id, size)
        for i, group in enumerate(groups):
            raw = os.path.join(tmp, f"layer{i}.tar")
            with open(raw, "wb") as f:
                write_layer(args.rootfs, group, args, f)
            diff_id = sha256_file(raw)
            blob = raw
            if args.compress == "gzip":
                blob = raw + ".gz"
                with open(raw, "rb") as src, open(blob, "wb") as dst:
                    with gzip.GzipFile(fileobj=dst, mode="wb", mtime=0, filename="") as gz:
                        shutil.copyfileobj(src, gz, 1 << 20)
                os.unlink(raw)
            digest = sha256_file(blob)
            layers.append((blob, digest, diff_id, os.path.getsize(blob)))
            log(f"layer {i + 1}/{len(groups)}: {len(group)} entries, {os.path.getsize(blob)} bytes, sha256:{digest[:12]}")

        cfg = {}
        if args.entrypoint is not None:
            cfg["Entrypoint"] = args.entrypoint
        if args.cmd is not None:
            cfg["Cmd"] = args.cmd
        if args.env:
            cfg["Env"] = args.env
        if args.workdir:
            cfg["WorkingDir"] = args.workdir
        if args.user:
            cfg["User"] = args.user
        created = "1970-01-01T00:00:00Z"
        config = jdump({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{l[2]}" for l in layers]},
            "history": [{"created": created, "created_by": "mkimage.py"} for _ in layers],
        })
        cfg_digest = hashlib.sha256(config).hexdigest()

        out_tmp = args.output + ".tmp"
        with tarfile.open(out_tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            if args.layout == "classic":
                names = []
                parent = ""
                for blob, digest, diff_id, _ in layers:
                    lid = hashlib.sha256((parent + diff_id).encode()).hexdigest()
                    add_dir(tf, lid)
                    add_bytes(tf, f"{lid}/VERSION", b"1.0")
                    add_bytes(tf, f"{lid}/json", jdump({"id": lid, **({"parent": parent} if parent else {})}))
                    add_file(tf, f"{lid}/layer.tar", blob)
                    names.append(f"{lid}/layer.tar")
                    parent = lid
                add_bytes(tf, f"{cfg_digest}.json", config)
                add_bytes(tf, "manifest.json", jdump([{"Config": f"{cfg_digest}.json", "RepoTags": [tag], "Layers": names}]))
                add_bytes(tf, "repositories", jdump({repo: {tagname: parent}}))
            else:
                mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if args.compress == "gzip" else "")
                manifest = jdump({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": f"sha256:{cfg_digest}", "size": len(config)},
                    "layers": [{"mediaType": mt, "digest": f"sha256:{d}", "size": s} for _, d, _, s in layers],
                })
                man_digest = hashlib.sha256(manifest).hexdigest()
                index = jdump({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [{
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{man_digest}", "size": len(manifest),
                        "annotations": {"io.containerd.image.name": f"docker.io/library/{tag}",
                                        "org.opencontainers.image.ref.name": tagname},
                    }],
                })
                add_dir(tf, "blobs")
                add_dir(tf, "blobs/sha256")
                seen = set()
                for blob, digest, _, _ in layers:
                    if digest not in seen:
                        seen.add(digest)
                        add_file(tf, f"blobs/sha256/{digest}", blob)
                add_bytes(tf, f"blobs/sha256/{cfg_digest}", config)
                add_bytes(tf, f"blobs/sha256/{man_digest}", manifest)
                add_bytes(tf, "index.json", index)
                add_bytes(tf, "manifest.json", jdump([{
                    "Config": f"blobs/sha256/{cfg_digest}", "RepoTags": [tag],
                    "Layers": [f"blobs/sha256/{d}" for _, d, _, _ in layers]}]))
                add_bytes(tf, "oci-layout", jdump({"imageLayoutVersion": "1.0.0"}))
                add_bytes(tf, "repositories", jdump({repo: {tagname: man_digest}}))
        os.replace(out_tmp, args.output)
        log(f"wrote {args.output} ({args.layout} layout, {len(layers)} layer(s), {os.path.getsize(args.output)} bytes)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

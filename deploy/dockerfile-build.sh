#!/usr/bin/env bash
# Builds the crate the way deploy/Dockerfile's build stage does, from exactly the files it
# copies, in a temporary directory: no container engine runs here, so this is how CI knows
# the image can be built. Each COPY of the build stage is copied from the repository into
# the directory (the stage's WORKDIR), and each RUN runs there with bash, in order.
#
# `cargo build` becomes `cargo check` (set DOCKERFILE_BUILD=build for the real thing): a
# missing source, schema or included file fails the check just as it fails the build, and
# the check spares CI a release build of every dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
verb=${DOCKERFILE_BUILD:-check}
# Compiled dependencies are shared with the project's own builds; the crate is not.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/dockerfile"

python3 - "$repo/deploy/Dockerfile" > "$work/steps" <<'PY'
import shlex, sys
lines, stage, joined = open(sys.argv[1]).read().splitlines(), 0, ""
for line in lines:
    joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
    if line.rstrip().endswith("\\"):
        continue
    words, joined = joined.strip(), ""
    if words.startswith("FROM "):
        stage += 1
        continue
    if stage != 1 or not words or words.startswith("#"):
        continue
    op, _, rest = words.partition(" ")
    if op == "COPY":
        if rest.startswith("--"):
            sys.exit(f"COPY flags are not supported here: {words}")
        print("COPY\t" + "\t".join(shlex.split(rest)))
    elif op == "RUN":
        print("RUN\t" + rest)
    elif op not in ("WORKDIR", "ENV", "ARG"):
        sys.exit(f"unsupported build-stage instruction: {words}")
PY

build="$work/src"
mkdir -p "$build"
while IFS=$'\t' read -r op rest; do
    case "$op" in
        COPY)
            IFS=$'\t' read -r -a parts <<<"$rest"
            dest=${parts[-1]}
            unset 'parts[-1]'
            for src in "${parts[@]}"; do
                if [ ! -e "$repo/$src" ]; then
                    echo "Dockerfile: COPY source $src does not exist" >&2
                    exit 1
                fi
                case "$dest" in
                    */) mkdir -p "$build/$dest"; cp -a "$repo/$src" "$build/$dest" ;;
                    ./) cp -a "$repo/$src" "$build/" ;;
                    *) mkdir -p "$(dirname "$build/$dest")"
                       if [ -d "$repo/$src" ]; then mkdir -p "$build/$dest"; cp -a "$repo/$src/." "$build/$dest/"
                       else cp -a "$repo/$src" "$build/$dest"; fi ;;
                esac
            done
            echo "COPY ${parts[*]} -> $dest"
            ;;
        RUN)
            command=${rest//cargo build/cargo $verb}
            echo "RUN $command"
            (cd "$build" && bash -euo pipefail -c "$command")
            ;;
    esac
done < "$work/steps"
echo "The Dockerfile's build stage compiles from the files it copies (cargo $verb)"

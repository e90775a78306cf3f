# shellcheck shell=bash
# Sourced by run.sh. Copies kernel modules, with everything they depend on, out of a Debian
# kernel package's module tree (scripts/fetch-debian-kernel.sh's <out>/modules).
#
# The package ships no modules.dep (depmod runs at install time), so dependencies come from each
# module's own `depends=` modinfo tag. Modules are written decompressed, because busybox insmod
# cannot load .ko.xz/.ko.zst files, whatever the package used (6.1 ships .ko, 6.12 .ko.xz).

# copy_modules <modules-dir> <dest-dir> <module-name>...
# Writes <dest>/<name>.ko for each module and its dependencies, and <dest>/load-order: one name
# a line, dependencies before the modules that need them (the order insmod must follow).
copy_modules() {
  local src=$1 dest=$2
  shift 2
  mkdir -p "$dest"
  : > "$dest/load-order"
  # Every module file of the tree, as "<name> <path>" with the name normalised to underscores
  # (kvm-amd.ko.xz is the module kvm_amd).
  _modules_index=$(find "$src" -name '*.ko' -o -name '*.ko.*' | awk '{
      name = $0; sub(/.*\//, "", name); sub(/\.ko(\..*)?$/, "", name); gsub(/-/, "_", name)
      print name, $0 }')
  local module
  for module in "$@"; do
    _copy_module "$src" "$dest" "${module//-/_}"
  done
}

_decompress_module() {
  case $1 in
    *.ko) cat "$1" ;;
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) echo "modules: unknown module compression: $1" >&2; return 1 ;;
  esac
}

# Depth-first: dependencies are copied, and listed in load-order, before the module itself.
_copy_module() {
  local src=$1 dest=$2 name=$3 file dep
  grep -qx "$name" "$dest/load-order" && return 0
  file=$(awk -v want="$name" '$1 == want { print $2; exit }' <<< "$_modules_index")
  if [ -z "$file" ]; then
    # Built into the kernel: nothing to load (modules.builtin lists paths, with dashes).
    if sed 's/.*\///; s/\.ko$//; s/-/_/g' "$src/modules.builtin" 2>/dev/null | grep -qx "$name"; then
      return 0
    fi
    echo "modules: no module '$name' in $src" >&2
    return 1
  fi
  _decompress_module "$file" > "$dest/$name.ko"
  for dep in $(tr '\0' '\n' < "$dest/$name.ko" | sed -n '/^depends=/{s///p;q}' | tr ',' ' '); do
    _copy_module "$src" "$dest" "$dep"
  done
  echo "$name" >> "$dest/load-order"
}

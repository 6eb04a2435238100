# Sourced by the benchmark scripts: link_raw DATA NAME WORK makes WORK/raw/NAME a raw dataset folder of
# symlinks to DATA/NAME (the shared data is only read; dataset.json is copied).
link_raw() {
  local raw=$3/raw/$2 sub
  [ -d "$raw" ] && return 0
  mkdir -p "$raw/imagesTr" "$raw/labelsTr"
  cp "$1/$2/dataset.json" "$raw/"
  for sub in imagesTr labelsTr; do ln -s "$1/$2/$sub/"* "$raw/$sub/"; done
}

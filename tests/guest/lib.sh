# Shared by /init and /bin/nuage-volumes in the test guest (busybox ash).
# Installed as /lib/nuage-guest.sh.

# say WORDS: one machine-readable line on the serial console.
say() {
	echo "nuage-guest: $*" > /dev/console
}

# say_bg WORDS: the same, from the background once the shell runs: the line
# break first, so that the line still starts the line after a shell prompt.
say_bg() {
	printf '\nnuage-guest: %s\n' "$*" > /dev/console
}

# bytes DEV OFFSET COUNT: COUNT raw bytes of DEV at OFFSET, NULs dropped.
bytes() {
	dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | tr -d '\000'
}

# fs_label DEV: prints "TYPE LABEL" (iso9660 or vfat, label with trailing
# blanks removed) or nothing when DEV holds neither filesystem.
fs_label() {
	if [ "$(bytes "$1" 32769 5)" = CD001 ]; then
		# primary volume descriptor at 32768, volume identifier at +40
		echo "iso9660 $(bytes "$1" 32808 32 | sed 's/[[:space:]]*$//')"
		return
	fi
	[ "$(dd if="$1" bs=1 skip=510 count=2 2>/dev/null | xxd -p)" = 55aa ] || return 0
	case "$(bytes "$1" 54 5)" in
	FAT12 | FAT16)
		echo "vfat $(bytes "$1" 43 11 | sed 's/[[:space:]]*$//')" ;;
	*)
		[ "$(bytes "$1" 82 5)" = FAT32 ] &&
			echo "vfat $(bytes "$1" 71 11 | sed 's/[[:space:]]*$//')" ;;
	esac
	return 0
}

# is_ours DEV: true for the guest's own boot disk (FAT labelled NUAGEBOOT)
# and for a NoCloud seed (label cidata, any case).
is_ours() {
	_l=$(fs_label "$1" | cut -d' ' -f2- | tr '[:upper:]' '[:lower:]')
	[ "$_l" = nuageboot ] || [ "$_l" = cidata ]
}

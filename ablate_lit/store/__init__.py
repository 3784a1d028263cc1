"""Run folders on disk: result rows (one file each, created once), claims of points being evaluated,
atomic files, and cached objects under the hash of what they depend on."""

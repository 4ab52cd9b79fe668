"""A tool's outputs: checked before its work, written beside their places, and put in place together after it.

    outputs = Outputs(force)
    outputs.files(out_dir, ("top_k.csv", "expand.json", "all_scores.npy"), "--out")
    outputs.folder(export_dir, "--export")
    outputs.check()                 # before any work: one line naming the path and the fix
    ...                             # the work
    with outputs:                   # write each output at outputs.staged(final path)
        write_text(outputs.staged(os.path.join(out_dir, "top_k.csv")), text)

check() refuses an output place that is a file, a non-empty folder unless
force, one output inside another, and a place that cannot be written. Inside
the with block every output goes to a staging folder beside its place
(`<folder>/.outputs.tmp<pid>/`); leaving the block without an error moves
them all in (files.replace_folders: what they replace is deleted only once
all are in place; then a declared file not written this time, like an
all_scores.npy of an earlier run, is removed), and an error leaves every
place as it was. The staging folders of a killed run are removed by the next
one once its process is gone.
"""
import os

from ..errors import UserError
from ..files import (drop_staging, inside, make_staging, remove_dead_leftovers, replace_folders, require_writable,
                    staging_folder)

STAGING = ".outputs.tmp"  # + pid


class Outputs:
    def __init__(self, force=False):
        self.force = force
        self.places = []        # (folder, the names this tool writes in it, option, whole folder)
        self.staging = {}       # folder -> (its staging folder, whether the folder was created)
        self.written = {}       # folder -> names staged

    def files(self, folder, names, option):
        """Files `names` the tool writes into `folder` (other files there are left alone)."""
        self.places.append((os.path.abspath(folder), tuple(names), option, False))

    def folder(self, path, option):
        """A folder the tool writes whole (replacing it, with force)."""
        path = os.path.abspath(path)
        self.places.append((os.path.dirname(path), (os.path.basename(path),), option, True))

    def check(self):
        """Refuse, before any work, a place the outputs cannot go to."""
        for folder, names, option, whole in self.places:
            target = os.path.join(folder, names[0]) if whole else folder
            remove_dead_leftovers(folder, STAGING)
            if os.path.lexists(target) and not os.path.isdir(target):
                raise UserError(f"{target}: exists and is not a folder; give {option} a folder")
            if os.path.isdir(target) and os.listdir(target) and not self.force:
                what = "it is replaced whole" if whole else f"its {', '.join(names)} are replaced, nothing else"
                raise UserError(f"{target}: not empty; choose another {option}, or pass --force ({what})")
            for other, other_names, other_option, other_whole in self.places:
                replaced = os.path.join(other, other_names[0])
                if other_whole and other_option != option and inside(target, replaced):
                    raise UserError(f"{target}: lies inside {other_option} {replaced}, which is replaced whole; "
                                    f"give {option} a place outside it")
            require_writable(folder, f"give {option} a writable place")

    def staged(self, path):
        """Where to write the output whose final place is `path`."""
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in self.staging:
            self.staging[folder] = staging_folder(folder, STAGING)  # recorded first: __exit__ drops it
            make_staging(self.staging[folder][0])
        self.written.setdefault(folder, []).append(name)
        return os.path.join(self.staging[folder][0], name)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            wholes = {folder for folder, _, _, whole in self.places if whole}
            for folder in sorted(self.staging, key=lambda f: f not in wholes):  # whole folders first
                names = self.written[folder]
                replace_folders(self.staging[folder][0], folder, names)
                del self.staging[folder]
                for f, declared, _, whole in self.places:  # an earlier run's output not written this time
                    for name in declared if f == folder and not whole else ():
                        if name not in names and os.path.isfile(os.path.join(folder, name)):
                            os.remove(os.path.join(folder, name))
        for folder, (staging, created) in self.staging.items():
            drop_staging(staging, folder, created)
        self.staging, self.written = {}, {}
        return False

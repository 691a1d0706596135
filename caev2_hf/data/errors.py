"""The errors a data stream raises when the data cannot give what was asked for. They carry a message that names
the data and the fix, and a script turns them into its one-line `error: ...` (`caev2_hf_cli.errors.UserError` is the
command line's; the data layer does not need it)."""


class DataStreamError(RuntimeError):
    """The data cannot give the batches asked for (empty, unreadable, or a resume position written for another worker
    count); the message names the data and the fix, and a script shows it as one line.

    Raised in the process that trains. A loader worker never raises it: PyTorch would re-raise it with the worker's
    traceback pasted into the message. The worker yields it instead, as a batch of its own, and the stream that
    reads the loader raises it (`pretraining_stream.ResumableBatchStream`).
    """


class EmptyPassError(DataStreamError):
    """A whole pass over (part of) the data gave no batch."""


class UnreadableShardError(DataStreamError):
    """A shard (a `.tar` file) cannot be read to its end: truncated, or no archive at all."""


def unreadable_shard_error(error: Exception) -> UnreadableShardError:
    """From the `tarfile.TarError` that stopped `datasets` mid-shard (it does not say which shard)."""
    return UnreadableShardError(f"A .tar shard of the data cannot be read ({type(error).__name__}: {error}).")


def empty_pass_error(epoch: int, part: str, batch_size: int) -> EmptyPassError:
    return EmptyPassError(
        f"A whole pass (epoch {epoch}) over {part} gave no batch: the dataset is empty, every image was unreadable "
        f"(see the warnings above), or {part} holds fewer than batch_size={batch_size} usable examples (use fewer "
        "loader workers or processes)."
    )

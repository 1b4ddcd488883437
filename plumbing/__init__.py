"""The harness under the method: command-line errors, ranks, records, files, video I/O, the dataset,
weight files. Nothing here imports anything of stm outside this folder."""

"""Other papers' networks and the protocol helpers around the method: the segmenters, MiniMax-Remover, the
metric networks, the VLM captioner and judge, the HTML pages."""

"""Tools around the pipeline: the GPU preflight (`doctor`), engine benchmarks (`bench`), parameter sweeps
(`sweep`) and CPU rehearsals of paper recipes (`rehearse`)."""

defmodule ServeEx.Test.Paths do
  @moduledoc "Where the shared schema and the service test models live."
  @root Path.expand("../../..", __DIR__)

  def golden(name), do: Path.join([@root, "shared_schema", "golden", name])
  def limits, do: Path.join([@root, "shared_schema", "wire", "limits.json"])
  def examples, do: Path.join([@root, "shared_schema", "examples", "requests.json"])

  @doc "Untrained full-size models written by `python -m train.golden --service-models` (make ex-test)."
  def service_models, do: Path.join([@root, "runs", "service_models"])
end

defmodule ServeEx do
  @moduledoc """
  The model service: requests from RabbitMQ, batched through the Rust engine, replies
  on each request's `reply_to`. `ServeEx.Application` describes the supervision tree,
  `ServeEx.Config` the settings, `ServeEx.Drain` the graceful stop.
  """

  @doc """
  Drains the node (see `ServeEx.Drain`) and stops the VM with status 0: the same as
  sending it SIGTERM.
  """
  @spec stop() :: :ok
  def stop, do: System.stop(0)
end

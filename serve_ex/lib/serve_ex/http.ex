defmodule ServeEx.HTTP do
  @moduledoc """
  Health and metrics over cowboy, on 127.0.0.1 by default:

  - `GET /healthz`: 200 when the broker is connected and at least one model is loaded,
    503 otherwise; the body says which.
  - `GET /metrics`: Prometheus text (`ServeEx.Metrics`).
  """

  @spec child_spec(ServeEx.Config.t()) :: Supervisor.child_spec()
  def child_spec(config) do
    dispatch =
      :cowboy_router.compile([
        {:_, [{"/healthz", __MODULE__.Health, []}, {"/metrics", __MODULE__.Metrics, []}]}
      ])

    %{
      id: __MODULE__,
      start:
        {:cowboy, :start_clear,
         [
           __MODULE__,
           %{socket_opts: [ip: config.http_ip, port: config.http_port]},
           %{env: %{dispatch: dispatch}}
         ]},
      type: :supervisor
    }
  end

  defmodule Health do
    @moduledoc false
    def init(req, state) do
      connected = ServeEx.Connection.connected?()
      models = ServeEx.ModelRegistry.models() |> Map.keys() |> Enum.sort()
      status = if connected and models != [], do: 200, else: 503

      body =
        :jsx.encode(%{
          "ready" => status == 200,
          "broker_connected" => connected,
          "models" => models
        })

      {:ok, :cowboy_req.reply(status, %{"content-type" => "application/json"}, body, req), state}
    end
  end

  defmodule Metrics do
    @moduledoc false
    def init(req, state) do
      headers = %{"content-type" => "text/plain; version=0.0.4"}
      {:ok, :cowboy_req.reply(200, headers, ServeEx.Metrics.text(), req), state}
    end
  end
end

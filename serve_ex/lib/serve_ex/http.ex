defmodule ServeEx.HTTP do
  @moduledoc """
  HTTP over cowboy, on 127.0.0.1 by default, on two listeners:

  - inference (`HTTP_PORT`): `POST /v1/models/{id}/{op}`, a request batched with the
    AMQP traffic (`ServeEx.HTTP.Inference`), and OpenAI's `GET /v1/models` and
    `POST /v1/completions` (`ServeEx.HTTP.Completions`); at most `HTTP_MAX_CONNECTIONS` connections
    at once, and at most 100 requests on one kept-alive connection;
  - health and metrics (`HEALTH_PORT`), with connections of their own, so that a flood
    on inference cannot make a healthy node fail its probes:
    - `GET /livez`: 200 while the VM is up and this listener answers;
    - `GET /readyz` (alias `/healthz`): 200 when the node takes work
      (`ServeEx.Status`), 503 otherwise; the JSON body says which condition is missing;
    - `GET /metrics`: Prometheus text (`ServeEx.Metrics`).

  The listeners are embedded in our supervision tree with `:ranch.child_spec/5` (not
  `:cowboy.start_clear`, which would put them under ranch's own supervisor), so a
  shutdown reaches them and the node can stop.

  The endpoint has no authentication. Inference and metrics answer only requests whose
  `Host` names one of `HTTP_HOSTS` (421 otherwise), so that a web page the operator
  opens cannot reach them through DNS rebinding; an `HTTP_IP` that is not a loopback
  address is logged as a warning at start.
  """
  require Logger

  # requests one kept-alive connection may carry before cowboy closes it
  @requests_per_connection 100
  # the health listener's own cap: probes and scrapes, not traffic
  @health_connections 128

  @doc "The two listeners' child specs: health and metrics first, then inference."
  @spec child_specs(ServeEx.Config.t()) :: [Supervisor.child_spec()]
  def child_specs(config) do
    warn_unless_loopback(config.http_ip)
    hosts = config.http_hosts

    health = [
      {"/livez", __MODULE__.Live, []},
      {"/readyz", __MODULE__.Ready, []},
      {"/healthz", __MODULE__.Ready, []},
      {"/metrics", __MODULE__.Metrics, hosts}
    ]

    inference = [
      {"/v1/models", __MODULE__.Completions, hosts},
      {"/v1/completions", __MODULE__.Completions, hosts},
      {"/v1/models/:model/:op", __MODULE__.Inference, hosts}
    ]

    [
      listener(
        __MODULE__.Health,
        config.http_ip,
        config.health_port,
        @health_connections,
        health
      ),
      listener(
        __MODULE__,
        config.http_ip,
        config.http_port,
        config.http_max_connections,
        inference
      )
    ]
  end

  defp listener(ref, ip, port, max_connections, routes) do
    :ranch.child_spec(
      ref,
      :ranch_tcp,
      # one connection supervisor: ranch applies max_connections to each of them
      %{socket_opts: [ip: ip, port: port], max_connections: max_connections, num_conns_sups: 1},
      :cowboy_clear,
      %{
        env: %{dispatch: :cowboy_router.compile([{:_, routes}])},
        connection_type: :supervisor,
        max_keepalive: @requests_per_connection,
        # no h2c upgrade (this cowboy predates HTTP/2's rapid-reset mitigation); a client
        # that opens with the HTTP/2 preface is still served: cowboy 2.8 cannot refuse it
        protocols: [:http]
      }
    )
  end

  @doc "The port the health and metrics listener is bound to (useful with `HEALTH_PORT=0`)."
  @spec health_port() :: :inet.port_number()
  def health_port, do: :ranch.get_port(__MODULE__.Health)

  @doc "The port the inference listener is bound to (useful with `HTTP_PORT=0`)."
  @spec port() :: :inet.port_number()
  def port, do: :ranch.get_port(__MODULE__)

  defmodule Live do
    @moduledoc false
    def init(req, state), do: {:ok, ServeEx.HTTP.reply_json(req, 200, %{"live" => true}), state}
  end

  defmodule Ready do
    @moduledoc false
    def init(req, state) do
      {ready, details} = ServeEx.Status.readiness()
      {:ok, ServeEx.HTTP.reply_json(req, if(ready, do: 200, else: 503), details), state}
    end
  end

  defmodule Metrics do
    @moduledoc false
    def init(req, hosts) do
      if ServeEx.HTTP.served_host?(req, hosts) do
        headers = %{"content-type" => "text/plain; version=0.0.4"}
        {:ok, :cowboy_req.reply(200, headers, ServeEx.Metrics.text(), req), hosts}
      else
        {:ok, ServeEx.HTTP.misdirected(req), hosts}
      end
    end
  end

  @doc false
  def reply_json(req, status, map),
    do: :cowboy_req.reply(status, %{"content-type" => "application/json"}, :jsx.encode(map), req)

  @doc "Whether the request's `Host` (its name, without the port) is one of `hosts`."
  @spec served_host?(:cowboy_req.req(), [String.t()]) :: boolean()
  def served_host?(req, hosts), do: String.downcase(:cowboy_req.host(req)) in hosts

  @doc "The 421 reply to a request whose `Host` is not served."
  @spec misdirected(:cowboy_req.req()) :: :cowboy_req.req()
  def misdirected(req) do
    body =
      ServeEx.Reply.error(
        :malformed_request,
        "the Host header names no host served here (HTTP_HOSTS)"
      )

    :cowboy_req.reply(421, %{"content-type" => "application/json"}, body, req)
  end

  defp warn_unless_loopback(ip) do
    unless loopback?(ip) do
      Logger.warning(
        "HTTP_IP=#{:inet.ntoa(ip)} is not a loopback address: the HTTP endpoint has no " <>
          "authentication, so put it behind an authenticating proxy (docs/service.md)"
      )
    end
  end

  defp loopback?({127, _, _, _}), do: true
  defp loopback?({0, 0, 0, 0, 0, 0, 0, 1}), do: true
  defp loopback?(_ip), do: false
end

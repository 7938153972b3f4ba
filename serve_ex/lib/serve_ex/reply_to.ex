defmodule ServeEx.ReplyTo do
  @moduledoc """
  Which `reply_to` names the service publishes to. Anyone who can publish a request
  picks its `reply_to`, so an unchecked name lets a client aim the service's replies
  at any queue, and a malformed direct reply-to name makes the broker close the
  publishing connection. Accepted, and nothing else:

  - a broker-generated queue name: `amq.gen-` and 22 characters of URL-safe base64;
  - a name under the configured prefix (`REPLY_QUEUE_PREFIX`), followed by 1 to 100
    letters, digits or `_.:-`;
  - a direct reply-to name in the broker's own form:
    `amq.rabbitmq.reply-to.<base64 of an encoded pid>.<base64 of 16 bytes>`, where the
    pid part decodes to an Erlang external-format pid (checked byte by byte: no atom is
    ever created from it) on the node name this broker uses in the names it hands out
    (`put_direct_node/1`, learnt by `ServeEx.Connection` at each connect). A pid on
    any other node makes RabbitMQ close the publishing connection; one on the right
    node that no consumer holds is merely unroutable. Until the node is known, and for
    a broker in a cluster whose clients sit on other nodes, direct reply-to names are
    refused: those clients use exclusive queues.

      iex> ServeEx.ReplyTo.accepted?("amq.gen--BqgpWru21hmTnxFXXGUGA", "serve_ex.reply.")
      true
      iex> ServeEx.ReplyTo.accepted?("amq.gen-short", "serve_ex.reply.")
      false
      iex> ServeEx.ReplyTo.accepted?("serve_ex.reply.client-7", "serve_ex.reply.")
      true
      iex> ServeEx.ReplyTo.accepted?("amq.rabbitmq.reply-to.AAAA.BBBB", "serve_ex.reply.")
      false
      iex> ServeEx.ReplyTo.node_of("amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AAADFgAAAABrCoHP.Nnv6ybiD5lIfZXseG/yPbA==")
      {:ok, "reply@9248884"}
      iex> ServeEx.ReplyTo.accepted?("serve_ex.requests", "serve_ex.reply.")
      false
  """

  @direct "amq.rabbitmq.reply-to."
  # External term format: 131, then NEW_PID_EXT (88) or PID_EXT (103), whose node is an
  # ATOM_UTF8_EXT (118) or ATOM_EXT (100) atom.
  @version 131
  @new_pid 88
  @pid 103
  @atom_tags [118, 100]

  @node_key {__MODULE__, :direct_node}

  @doc "Records the node of this broker's direct reply-to names."
  @spec put_direct_node(String.t()) :: :ok
  def put_direct_node(node) do
    if :persistent_term.get(@node_key, nil) != node, do: :persistent_term.put(@node_key, node)
    :ok
  end

  @doc "The node of a direct reply-to name in the broker's form."
  @spec node_of(String.t() | nil) :: {:ok, String.t()} | {:error, :not_direct_reply_to}
  def node_of(@direct <> rest) do
    with [pid64, key64] <- String.split(rest, "."),
         {:ok, pid} <- Base.decode64(pid64),
         {:ok, <<_::binary-size(16)>>} <- Base.decode64(key64),
         {:ok, node} <- encoded_pid_node(pid) do
      {:ok, node}
    else
      _ -> {:error, :not_direct_reply_to}
    end
  end

  def node_of(_name), do: {:error, :not_direct_reply_to}

  @typedoc """
  Which `reply_to` names a node accepts: `prefix` is `REPLY_QUEUE_PREFIX`; with
  `require_user_id` (`AMQP_REQUIRE_USER_ID`), only names its sender owns (`owned?/3`).
  """
  @type policy :: %{prefix: String.t(), require_user_id: boolean()}

  @doc """
  Whether a request from `user_id` (its AMQP `user_id` property, which the broker
  checks against the connection's user) may have its reply published to `name`.
  """
  @spec allowed?(String.t() | nil, String.t() | nil, policy()) :: boolean()
  def allowed?(name, user_id, %{require_user_id: true, prefix: prefix}),
    do: owned?(name, prefix, user_id)

  def allowed?(name, _user_id, %{prefix: prefix}), do: accepted?(name, prefix)

  @doc """
  Whether `name` is a reply queue of `user_id`'s own: under `<prefix><user_id>.`. A
  user id is 1 to 64 letters, digits, `_` or `-`, so that no user's names are under
  another's.

      iex> ServeEx.ReplyTo.owned?("serve_ex.reply.alice.q1", "serve_ex.reply.", "alice")
      true
      iex> ServeEx.ReplyTo.owned?("serve_ex.reply.alice.q1", "serve_ex.reply.", "bob")
      false
      iex> ServeEx.ReplyTo.owned?("amq.gen--BqgpWru21hmTnxFXXGUGA", "serve_ex.reply.", "alice")
      false
  """
  @spec owned?(String.t() | nil, String.t(), String.t() | nil) :: boolean()
  def owned?(name, prefix, user_id) when is_binary(name) and is_binary(user_id) do
    Regex.match?(~r/\A[A-Za-z0-9_-]{1,64}\z/, user_id) and prefix != "" and
      String.starts_with?(name, prefix <> user_id <> ".") and under_prefix?(name, prefix) and
      byte_size(name) <= 255
  end

  def owned?(_name, _prefix, _user_id), do: false

  @spec accepted?(String.t() | nil, String.t()) :: boolean()
  def accepted?(name, prefix) when is_binary(name) do
    byte_size(name) <= 255 and
      (Regex.match?(~r/\Aamq\.gen-[A-Za-z0-9_-]{22}\z/, name) or
         under_prefix?(name, prefix) or direct_reply_to?(name))
  end

  def accepted?(_name, _prefix), do: false

  defp under_prefix?(name, prefix) do
    case name do
      <<^prefix::binary-size(byte_size(prefix)), rest::binary>> when prefix != "" ->
        Regex.match?(~r/\A[A-Za-z0-9_.:-]{1,100}\z/, rest)

      _ ->
        false
    end
  end

  defp direct_reply_to?(name) do
    case node_of(name) do
      {:ok, node} -> node == :persistent_term.get(@node_key, nil)
      {:error, _} -> false
    end
  end

  defp encoded_pid_node(<<@version, @new_pid, tag, len::16, node::binary-size(len), _::96>>)
       when tag in @atom_tags,
       do: {:ok, node}

  defp encoded_pid_node(<<@version, @pid, tag, len::16, node::binary-size(len), _::72>>)
       when tag in @atom_tags,
       do: {:ok, node}

  defp encoded_pid_node(_), do: :error
end

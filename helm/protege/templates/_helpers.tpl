{{/* ---------------------------------------------------------------------------
Names and labels
--------------------------------------------------------------------------- */}}

{{- define "protege.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource prefix. KubeRay derives `<name>-head-svc` and `<name>-serve-svc` from the
RayService name, and Ray pod names add a hash and a group name, so keep it short (40).
*/}}
{{- define "protege.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "protege.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "protege.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protege
{{- end }}

{{- define "protege.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protege.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "improver") */}}
{{- define "protege.componentLabels" -}}
{{ include "protege.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels of a pod template: no chart or app version, so that bumping the chart alone never
changes a Ray pod template (for a RayService that would be a whole new cluster).
(dict "ctx" $ "component" "improver")
*/}}
{{- define "protege.podLabels" -}}
{{ include "protege.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: protege
{{- end }}

{{/* Labels of a Ray pod; protege.io/ray selects every Ray pod (metrics, NetworkPolicy). */}}
{{- define "protege.rayPodLabels" -}}
{{ include "protege.podLabels" . }}
protege.io/ray: "true"
{{- end }}

{{- define "protege.componentSelector" -}}
{{ include "protege.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* KubeRay's services of the RayService: they follow the active cluster across upgrades. */}}
{{- define "protege.headService" -}}
{{- printf "%s-head-svc" (include "protege.fullname" .) }}
{{- end }}
{{- define "protege.serveService" -}}
{{- printf "%s-serve-svc" (include "protege.fullname" .) }}
{{- end }}

{{- define "protege.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "protege.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "protege.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- define "protege.gpuImage" -}}
{{- printf "%s:%s" .Values.gpuImage.repository (default .Chart.AppVersion .Values.gpuImage.tag) }}
{{- end }}

{{/* ---------------------------------------------------------------------------
Shared names (point 13): what two releases on one Kafka or one MLflow must not share.
--------------------------------------------------------------------------- */}}

{{/* PROTEGE_NAMESPACE: protegeNamespace, or <kubernetes namespace>.<release>. */}}
{{- define "protege.namespace" -}}
{{- default (printf "%s.%s" .Release.Namespace .Release.Name) .Values.protegeNamespace }}
{{- end }}

{{- define "protege.consumerGroup" -}}
{{- default (printf "%s-improver" (include "protege.namespace" .)) .Values.improver.consumerGroup }}
{{- end }}

{{/* The event topics, by setting name. */}}
{{- define "protege.topics" -}}
{{- $ns := include "protege.namespace" . -}}
{{- toJson (dict "kafka_topic_predictions" (printf "%s.predictions" $ns) "kafka_topic_feedback" (printf "%s.feedback" $ns) "kafka_topic_models" (printf "%s.models" $ns)) }}
{{- end }}

{{/* ---------------------------------------------------------------------------
Secrets: the chart's own Secrets hold what was given as a plain value or generated.
--------------------------------------------------------------------------- */}}

{{- define "protege.secretName" -}}
{{- include "protege.fullname" . }}
{{- end }}

{{- define "protege.rayTokenSecretName" -}}
{{- default (printf "%s-ray-token" (include "protege.fullname" .)) .Values.rayCluster.auth.existingSecret }}
{{- end }}

{{/*
A generated secret value, base64-encoded: the live Secret's value when there is one (so that
upgrades keep it); a new random value on a first install against a cluster; and a failed
render when there is no cluster to ask. `helm template`, `--dry-run`, Argo CD and other
GitOps renders see no cluster (lookup returns nothing): generating there would rotate the
secret on every sync, and replicas started at different times would disagree on it.
The probe is kube-root-ca.crt, which Kubernetes puts in every namespace.
(dict "ctx" $ "secret" NAME "key" KEY "length" N "fix" "what to set instead")
*/}}
{{- define "protege.generatedSecret" -}}
{{- $ := .ctx -}}
{{- $live := (lookup "v1" "Secret" $.Release.Namespace .secret).data | default dict -}}
{{- if hasKey $live .key -}}
{{- index $live .key -}}
{{- else if (lookup "v1" "ConfigMap" $.Release.Namespace "kube-root-ca.crt") -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- else -}}
{{- fail (printf "%s: this render cannot reach a cluster (helm template, --dry-run, Argo CD, or a namespace that does not exist yet), so a generated secret would change on every render. Set %s, or install with helm against the cluster into an existing namespace." .key .fix) -}}
{{- end -}}
{{- end }}

{{/* Does the chart create its main Secret at all? */}}
{{- define "protege.createsSecret" -}}
{{- if or (not .Values.auth.existingSecret) (and .Values.store.url (not .Values.store.existingSecret)) (and (eq .Values.foundationModel.backend "openai") .Values.foundationModel.openai.apiKey (not .Values.foundationModel.openai.existingSecret)) (and .Values.kafka.sasl.password (not .Values.kafka.sasl.existingSecret)) }}true{{ end }}
{{- end }}

{{- define "protege.authSecretName" -}}
{{- default (include "protege.secretName" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "protege.kafkaBootstrap" -}}
{{- if .Values.kafka.bundled.enabled }}
{{- printf "%s-kafka:9092" (include "protege.fullname" .) }}
{{- else }}
{{- required "kafka.bootstrapServers is required unless kafka.bundled.enabled" .Values.kafka.bootstrapServers }}
{{- end }}
{{- end }}

{{/* MLflow: the chart's server unless mlflow.trackingUri names one. */}}
{{- define "protege.mlflowServer" -}}
{{- if not .Values.mlflow.trackingUri }}true{{ end }}
{{- end }}
{{- define "protege.mlflowName" -}}
{{- printf "%s-mlflow" (include "protege.fullname" .) }}
{{- end }}
{{/* The improver's API, for the gateways (PROTEGE_IMPROVER_URL). */}}
{{- define "protege.improverUrl" -}}
{{- printf "http://%s-improver:%d" (include "protege.fullname" .) (int .Values.improver.port) }}
{{- end }}
{{- define "protege.mlflowTrackingUri" -}}
{{- default (printf "http://%s:5000" (include "protege.mlflowName" .)) .Values.mlflow.trackingUri }}
{{- end }}

{{/* ---------------------------------------------------------------------------
Settings. Serving gets its settings as the Serve application's arguments (serveConfigV2), so
that KubeRay applies a change to the running cluster; the improver gets the same names as
PROTEGE_* environment variables. Pod environments keep only paths and secrets.
--------------------------------------------------------------------------- */}}

{{- define "protege.homePath" -}}/var/lib/protege{{- end }}
{{- define "protege.spoolPath" -}}/var/lib/protege-spool{{- end }}
{{- define "protege.tasksPath" -}}/etc/protege/tasks/tasks.yaml{{- end }}
{{- define "protege.apiKeysPath" -}}/etc/protege/auth/api-keys.json{{- end }}
{{- define "protege.hfHome" -}}/var/lib/hf{{- end }}

{{- define "protege.tasksConfigMap" -}}
{{- default (printf "%s-tasks" (include "protege.fullname" .)) .Values.tasksExistingConfigMap }}
{{- end }}

{{/* The tasks YAML the chart ships or was given (empty with tasksExistingConfigMap). */}}
{{- define "protege.tasksYaml" -}}
{{- if not .Values.tasksExistingConfigMap }}
{{- if .Values.tasks }}
{{- toYaml (dict "tasks" .Values.tasks) }}
{{- else }}
{{- .Files.Get "files/tasks.yaml" }}
{{- end }}
{{- end }}
{{- end }}

{{/* vllm_kwargs: the values' plus tensor parallelism when a replica spans several GPUs. */}}
{{- define "protege.vllmKwargs" -}}
{{- $fm := .Values.foundationModel }}
{{- $kwargs := deepCopy ($fm.vllmKwargs | default dict) }}
{{- if $fm.revision }}
{{- $_ := set $kwargs "revision" $fm.revision }}
{{- end }}
{{- if gt (float64 $fm.numGpus) 1.0 }}
{{- if ne (float64 $fm.numGpus) (float64 (int $fm.numGpus)) }}
{{- fail "foundationModel.numGpus above 1 must be a whole number (vLLM's tensor_parallel_size)" }}
{{- end }}
{{- range $key := list "tensor_parallel_size" "distributed_executor_backend" "pipeline_parallel_size" }}
{{- if hasKey $kwargs $key }}
{{- fail (printf "foundationModel.vllmKwargs.%s: the chart sets it from foundationModel.numGpus" $key) }}
{{- end }}
{{- end }}
{{- /* mp: vLLM's workers are processes of the replica, on the GPUs Ray gave the replica; the
Ray executor would ask Ray for placement-group bundles the Serve replica does not have. */}}
{{- $_ := set $kwargs "tensor_parallel_size" (int $fm.numGpus) }}
{{- $_ := set $kwargs "distributed_executor_backend" "mp" }}
{{- end }}
{{- toJson $kwargs }}
{{- end }}

{{/* Settings shared by serving and the improver, as {setting_name: value}. */}}
{{- define "protege.commonSettings" -}}
{{- $s := dict "namespace" (include "protege.namespace" .) "kafka_bootstrap" (include "protege.kafkaBootstrap" .) "kafka_security_protocol" .Values.kafka.securityProtocol "kafka_replication_factor" (ternary 1 (int .Values.kafka.replicationFactor) .Values.kafka.bundled.enabled) "mlflow_tracking_uri" (include "protege.mlflowTrackingUri" .) }}
{{- $s = merge $s (include "protege.topics" . | fromJson) }}
{{- with .Values.kafka.sasl.mechanism }}{{ $_ := set $s "kafka_sasl_mechanism" . }}{{ end }}
{{- with .Values.kafka.sasl.username }}{{ $_ := set $s "kafka_sasl_username" . }}{{ end }}
{{- toJson $s }}
{{- end }}

{{/* The arguments of build_app: every setting of the Serve application. */}}
{{- define "protege.serveArgs" -}}
{{- $fm := .Values.foundationModel }}
{{- $args := include "protege.commonSettings" . | fromJson }}
{{- $_ := set $args "auth_disabled" .Values.auth.disabled }}
{{- if not .Values.auth.disabled }}
{{- $_ := set $args "api_keys_file" (include "protege.apiKeysPath" .) }}
{{- end }}
{{- $_ := set $args "events_spool_dir" (include "protege.spoolPath" .) }}
{{- if .Values.improver.enabled }}
{{- $_ := set $args "improver_url" (include "protege.improverUrl" .) }}
{{- end }}
{{- $_ := set $args "fm_backend" $fm.backend }}
{{- with $fm.model }}{{ $_ := set $args "fm_model" . }}{{ end }}
{{- if eq $fm.backend "vllm" }}
{{- $_ := set $args "fm_num_gpus" $fm.numGpus }}
{{- $_ := set $args "vllm_kwargs" (include "protege.vllmKwargs" . | fromJson) }}
{{- else }}
{{- $_ := set $args "fm_num_gpus" 0 }}
{{- end }}
{{- if eq $fm.backend "openai" }}
{{- $_ := set $args "openai_base_url" (required "foundationModel.openai.baseUrl is required for the openai backend" $fm.openai.baseUrl) }}
{{- end }}
{{- /* The tasks themselves: an edit reaches Serve in place, with no wait for a ConfigMap. */}}
{{- with include "protege.tasksYaml" . }}
{{- $_ := set $args "tasks_inline" . }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{- $_ := set $args (lower $key) $value }}
{{- end }}
{{- toJson (merge (deepCopy .Values.serve.args) $args) }}
{{- end }}

{{/* ---------------------------------------------------------------------------
Secrets in containers: each only where it is read.
--------------------------------------------------------------------------- */}}

{{- define "protege.env.signingSecret" -}}
- name: PROTEGE_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "protege.authSecretName" . }}
      key: signing-secret
{{- end }}

{{- define "protege.env.kafkaPassword" -}}
{{- if or .Values.kafka.sasl.existingSecret .Values.kafka.sasl.password }}
- name: PROTEGE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protege.secretName" .) .Values.kafka.sasl.existingSecret }}
      key: {{ if .Values.kafka.sasl.existingSecret }}{{ .Values.kafka.sasl.existingSecretKey }}{{ else }}kafka-sasl-password{{ end }}
{{- end }}
{{- end }}

{{- define "protege.env.openaiKey" -}}
{{- if and (eq .Values.foundationModel.backend "openai") (or .Values.foundationModel.openai.existingSecret .Values.foundationModel.openai.apiKey) }}
- name: PROTEGE_OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protege.secretName" .) .Values.foundationModel.openai.existingSecret }}
      key: {{ if .Values.foundationModel.openai.existingSecret }}{{ .Values.foundationModel.openai.existingSecretKey }}{{ else }}openai-api-key{{ end }}
{{- end }}
{{- end }}

{{- define "protege.env.storeUrl" -}}
{{- if or .Values.store.existingSecret .Values.store.url }}
- name: PROTEGE_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protege.secretName" .) .Values.store.existingSecret }}
      key: {{ if .Values.store.existingSecret }}{{ .Values.store.existingSecretKey }}{{ else }}store-url{{ end }}
{{- end }}
{{- end }}

{{- define "protege.env.hfToken" -}}
{{- with .Values.foundationModel.hfToken.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.foundationModel.hfToken.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Ray's token, for the improver (KubeRay gives it to the Ray containers itself). */}}
{{- define "protege.env.rayToken" -}}
{{- if .Values.rayCluster.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "protege.rayTokenSecretName" . }}
      key: auth_token
{{- end }}
{{- end }}

{{/* Paths and caches of every Protégé container; the root filesystem is read-only. */}}
{{- define "protege.env.paths" -}}
- name: PROTEGE_HOME
  value: {{ include "protege.homePath" . | quote }}
- name: PROTEGE_TASKS_FILE
  value: {{ include "protege.tasksPath" . | quote }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: TRITON_CACHE_DIR
  value: /home/ray/.cache/triton
- name: CUDA_CACHE_PATH
  value: /home/ray/.cache/nv
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}

{{/* ---------------------------------------------------------------------------
Volumes. (dict "ctx" $ "role" "head|cpu|gpu|train|improver")
--------------------------------------------------------------------------- */}}

{{- define "protege.volumes" -}}
{{- $ := .ctx -}}
{{- if has .role (list "head" "cpu" "gpu" "improver") }}
- name: tasks
  configMap:
    name: {{ include "protege.tasksConfigMap" $ }}
{{- end }}
{{- if and (eq .role "cpu") (not $.Values.auth.disabled) }}
- name: auth
  secret:
    secretName: {{ include "protege.authSecretName" $ }}
    items:
      - key: api-keys.json
        path: api-keys.json
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $.Values.rayCluster.scratch.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ $.Values.rayCluster.scratch.cacheSizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ if eq .role "improver" }}{{ $.Values.improver.homeSizeLimit }}{{ else }}{{ $.Values.rayCluster.scratch.homeSizeLimit }}{{ end }}
{{- if has .role (list "head" "cpu") }}
- name: spool
  {{- if $.Values.rayCluster.spool.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $.Values.rayCluster.spool.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $.Values.rayCluster.spool.sizeLimit }}
  {{- end }}
{{- end }}
{{- with $.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "protege.volumeMounts" -}}
{{- $ := .ctx -}}
{{- if has .role (list "head" "cpu" "gpu" "improver") }}
- name: tasks
  mountPath: /etc/protege/tasks
  readOnly: true
{{- end }}
{{- if and (eq .role "cpu") (not $.Values.auth.disabled) }}
- name: auth
  mountPath: /etc/protege/auth
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/ray/.cache
- name: home
  mountPath: {{ include "protege.homePath" $ }}
{{- if has .role (list "head" "cpu") }}
- name: spool
  mountPath: {{ include "protege.spoolPath" $ }}
{{- end }}
{{- with $.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Ray's ports: GCS, dashboard (KubeRay deploys Serve through it), client, Serve, metrics. */}}
{{- define "protege.rayHeadPorts" -}}
- {name: gcs-server, containerPort: 6379}
- {name: dashboard, containerPort: 8265}
- {name: client, containerPort: 10001}
- {name: serve, containerPort: 8000}
- {name: metrics, containerPort: 8080}
{{- end }}
{{- define "protege.rayWorkerPorts" -}}
- {name: serve, containerPort: 8000}
- {name: metrics, containerPort: 8080}
{{- end }}

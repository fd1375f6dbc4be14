{{/* Names, labels and shared snippets of the mcp-opa-gateway chart. */}}

{{- define "gw.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gw.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gw.control" -}}{{ include "gw.fullname" . }}-control{{- end -}}
{{- define "gw.data" -}}{{ include "gw.fullname" . }}-data{{- end -}}
{{- define "gw.opaConfig" -}}{{ include "gw.fullname" . }}-opa{{- end -}}

{{- define "gw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one plane: include "gw.selector" (list . "control") */}}
{{- define "gw.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "gw.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}-plane
{{- end -}}

{{- define "gw.secretName" -}}
{{- default (printf "%s-secrets" (include "gw.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "gw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gw.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "gw.opaImage" -}}
{{- if .Values.opa.image.digest -}}
{{ .Values.opa.image.repository }}@{{ .Values.opa.image.digest }}
{{- else -}}
{{ .Values.opa.image.repository }}:{{ .Values.opa.image.tag }}
{{- end -}}
{{- end -}}

{{- define "gw.controlUrl" -}}
http://{{ include "gw.control" . }}.{{ .Release.Namespace }}.svc:{{ .Values.controlPlane.service.port }}
{{- end -}}

{{- define "gw.dataUrl" -}}
{{- if .Values.dataPlane.publicUrl -}}
{{ trimSuffix "/" .Values.dataPlane.publicUrl }}
{{- else -}}
http://{{ include "gw.data" . }}.{{ .Release.Namespace }}.svc:{{ .Values.dataPlane.service.port }}
{{- end -}}
{{- end -}}

{{/* The Host values a data plane answers: pod IP, loopback (probes), the Service's names
     (in-cluster clients), the public URL's authority and extraAllowedHosts. The pod IP comes
     from the POD_IP variable ($(POD_IP) is expanded by the kubelet). */}}
{{- define "gw.allowedHosts" -}}
{{- $port := int .Values.dataPlane.port -}}
{{- $svcPort := int .Values.dataPlane.service.port -}}
{{- $svc := include "gw.data" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list (printf "$(POD_IP):%d" $port) (printf "127.0.0.1:%d" $port) (printf "localhost:%d" $port) -}}
{{- range $name := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $hosts = append $hosts (printf "%s:%d" $name $svcPort) -}}
{{- end -}}
{{- $public := urlParse (include "gw.dataUrl" .) -}}
{{- $hosts = append $hosts $public.host -}}
{{- if not (contains ":" $public.host) -}}
{{- $hosts = append $hosts (printf "%s:%s" $public.host (ternary "443" "80" (eq $public.scheme "https"))) -}}
{{- end -}}
{{- $hosts = concat $hosts .Values.dataPlane.extraAllowedHosts -}}
{{- join "," (uniq $hosts) -}}
{{- end -}}

{{- define "gw.allowedOrigins" -}}
{{- $public := urlParse (include "gw.dataUrl" .) -}}
{{- $origins := list (printf "%s://%s" $public.scheme $public.host) -}}
{{- $origins = concat $origins .Values.dataPlane.extraAllowedOrigins -}}
{{- join "," (uniq $origins) -}}
{{- end -}}

{{/* Environment shared by both planes. */}}
{{- define "gw.commonEnv" -}}
- name: GATEWAY_TENANT
  value: {{ .Values.tenant | quote }}
- name: GATEWAY_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: GATEWAY_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: GATEWAY_CONTROL_PORT
  value: {{ .Values.controlPlane.port | quote }}
- name: GATEWAY_DATA_PORT
  value: {{ .Values.dataPlane.port | quote }}
- name: GATEWAY_CONTROL_URL
  value: {{ include "gw.controlUrl" . | quote }}
{{- with .Values.jwt }}
{{- if .issuer }}
- name: GATEWAY_JWT_ISSUER
  value: {{ .issuer | quote }}
- name: GATEWAY_JWT_AUDIENCE
  value: {{ .audience | quote }}
- name: GATEWAY_JWKS_URL
  value: {{ .jwksUrl | quote }}
- name: GATEWAY_JWT_ROLES_CLAIM
  value: {{ .rolesClaim | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A secretKeyRef env entry: include "gw.secretEnv" (list . "ENV_NAME" "keyField") */}}
{{- define "gw.secretEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "gw.secretName" $root }}
      key: {{ index $root.Values.secrets.keys (index . 2) }}
{{- end -}}

{{- define "gw.metricsAnnotations" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress rules (networkpolicy.yaml) */}}
{{- define "gw.np.dns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
{{- define "gw.np.peers" -}}
{{- /* (list <peers> <ports>): one egress rule, nothing when there is no peer */ -}}
{{- $peers := index . 0 -}}
{{- if $peers }}
- to:
    {{- toYaml $peers | nindent 4 }}
  ports:
    {{- range $port := index . 1 }}
    - protocol: TCP
      port: {{ $port }}
    {{- end }}
{{- end }}
{{- end -}}

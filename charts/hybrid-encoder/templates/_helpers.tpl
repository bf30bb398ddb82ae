{{/* Names, labels and the values several templates share. */}}

{{- define "hybrid-encoder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; component names append "-triton" / "-gateway", so keep room for them. */}}
{{- define "hybrid-encoder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hybrid-encoder.triton" -}}
{{ include "hybrid-encoder.fullname" . }}-triton
{{- end }}

{{- define "hybrid-encoder.gateway" -}}
{{ include "hybrid-encoder.fullname" . }}-gateway
{{- end }}

{{- define "hybrid-encoder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "hybrid-encoder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "triton"). */}}
{{- define "hybrid-encoder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hybrid-encoder.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hybrid-encoder.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{/* Triton's headless Service as a name that resolves to every ready Triton pod. */}}
{{- define "hybrid-encoder.tritonHost" -}}
{{ include "hybrid-encoder.triton" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end }}

{{- define "hybrid-encoder.modelClaim" -}}
{{ .Values.triton.modelRepository.pvc.existingClaim | default (printf "%s-models" (include "hybrid-encoder.fullname" .)) }}
{{- end }}

{{/* The environment of Triton's models and of the export init container. */}}
{{- define "hybrid-encoder.modelEnv" -}}
{{- $t := .Values.triton -}}
- name: HYBRID_PROFILE
  value: {{ .Values.profile | quote }}
- name: HF_HOME
  value: {{ $t.hfCache.mountPath | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- if $t.profileOverrides }}
- name: HYBRID_PROFILE_OVERRIDES
  value: {{ $t.profileOverrides | quote }}
{{- end }}
{{- if $t.compileCache.enabled }}
- name: TORCHINDUCTOR_CACHE_DIR
  value: {{ printf "%s/inductor" $t.compileCache.mountPath | quote }}
- name: TRITON_CACHE_DIR
  value: {{ printf "%s/triton-kernels" $t.compileCache.mountPath | quote }}
{{- end }}
{{- range $name, $value := $t.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Triton's and the export container's mounts: call with (dict "root" $ "modelsReadOnly" bool). */}}
{{- define "hybrid-encoder.tritonMounts" -}}
{{- $t := .root.Values.triton -}}
- name: dshm
  mountPath: /dev/shm
- name: models
  mountPath: {{ $t.modelRepository.mountPath }}
  readOnly: {{ .modelsReadOnly }}
{{- if $t.compileCache.enabled }}
- name: compile-cache
  mountPath: {{ $t.compileCache.mountPath }}
{{- end }}
{{- if $t.hfCache.existingClaim }}
- name: hf-cache
  mountPath: {{ $t.hfCache.mountPath }}
  readOnly: true
{{- end }}
{{- if $t.weights.existingClaim }}
- name: weights
  mountPath: {{ $t.weights.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
